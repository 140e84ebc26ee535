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
is kombu's, and anything but plain JSON (compression, other serializers,
kombu's tagged types) is decoded by kombu's serializer registry.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

from kombu.compression import decompress
from kombu.serialization import loads

from . import fastjson

#: What the receiver accepts on either path, as kombu's ``accept`` list (no pickle, ever).
ACCEPT = {"application/json"}
_UTF8 = ("utf-8", "utf8", None)


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


def decode(payload: bytes | str) -> Any:
    """The event (a dict, or a list for ``task.multi``) inside one published envelope.

    Raises ``ValueError``/``KeyError``/``TypeError`` or a kombu error for an
    envelope that is not kombu's or a body it cannot decode.
    """
    envelope = fastjson.loads(payload)
    body = envelope["body"]
    if (envelope.get("properties") or {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return decode_body(
        body,
        envelope.get("content-type"),
        envelope.get("content-encoding"),
        (envelope.get("headers") or {}).get("compression"),
    )


def decode_body(
    body: Any, content_type: str | None, content_encoding: str | None, compression: str | None
) -> Any:
    """An event message's body, on either receiver path.

    Celery events are plain JSON: orjson decodes them directly, skipping
    kombu's serializer registry and the decoder object it builds per message.
    Anything else (compression, another serializer, kombu's tagged types such
    as datetimes) takes kombu's own decoders, limited to :data:`ACCEPT`.
    """
    if (
        content_type == "application/json"
        and content_encoding in _UTF8
        and not compression
        and isinstance(body, bytes | str)
        and (b'"__type__"' if isinstance(body, bytes) else '"__type__"') not in body
    ):
        return fastjson.loads(body)
    if compression:
        body = decompress(body, compression)
    return loads(body, content_type, content_encoding or "utf-8", accept=ACCEPT)
