"""The Celery event receiver: broker ``celeryev`` exchange -> TaskEvent -> store.

Consumes every event (task-*, including task-sent and custom events such as
task-progress; worker-*; and Celery's batched ``task.multi`` lists) from an
auto-delete queue bound to the event exchange, exactly as Celery's own
``EventReceiver`` binds it, but decodes messages itself: a malformed message
(whatever it holds: see :mod:`monitor.redis_fanout` and
:meth:`~monitor.model.TaskEvent.from_celery_event`) costs one count in
``malformed:event`` and a rate-limited log line, never the connection, and no
later event. Records go through a
:class:`~monitor.writer.BufferedWriter` in blocking mode: while Redis is away
the receiver stops consuming and events wait in the broker.

Usable as a library (``Receiver(settings).start()`` / ``.stop()``, embedded in
``monitor serve``) and from the CLI (``python -m monitor events``: ``run()``).
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import threading
import time
import uuid
from typing import Any

import redis
from celery import Celery
from celery.events.event import get_exchange
from kombu import Connection, Consumer, Queue
from kombu.message import Message as KombuMessage
from kombu.transport import redis as kombu_redis

from . import redis_fanout
from .config import Settings, mask_url
from .model import MalformedEvent, TaskEvent, redact_args_repr, sensitive_positions
from .store import Store
from .writer import BufferedWriter

logger = logging.getLogger(__name__)

#: Capped exponential backoff for broker reconnects (seconds).
RECONNECT_START = 0.5
#: Low: a broker that comes back is consumed from again within seconds (a
#: retry every 2 s costs one failed connect, nothing more).
RECONNECT_MAX = 2.0
#: Seconds between two log lines about malformed events.
MALFORMED_LOG_EVERY = 10.0
#: Errors in a row from kombu's own reading of messages (not of the connection)
#: after which the connection is assumed broken after all, and re-established.
KOMBU_ERRORS_IN_A_ROW = 100


def make_app(settings: Settings, app: Celery | None = None) -> Celery:
    """The Celery app whose broker we listen on: the user's (``-A``) or our own."""
    if app is None:
        app = Celery("monitor", broker=settings.broker_url or settings.redis_url)
    elif settings.broker_url:
        app.conf.broker_url = settings.broker_url
    app.conf.broker_connection_retry_on_startup = True
    return app


class _DeferredDecompression(KombuMessage):
    """Keeps kombu's ``Message`` from inflating a compressed body (kombu's
    ``decompress`` has no size cap: a 10 kB body could take gigabytes): the
    ``compression`` header moves to ``deferred_compression`` and
    :func:`decode_body` inflates the body with the cap."""

    def __init__(self, *args: Any, headers: Any = None, **kwargs: Any) -> None:
        compression = None
        if isinstance(headers, dict) and "compression" in headers:
            headers = dict(headers)
            compression = headers.pop("compression")
        self.deferred_compression = compression
        super().__init__(*args, headers=headers, **kwargs)


class _UnreadableMessage:
    """Mixed in first: a message whose transport envelope kombu cannot even
    read (a virtual transport's JSON that is not an object, say) fails in the
    transport's ``__init__``, which kombu calls outside its error handling.
    Kept as a message with ``errors`` instead, which kombu reports through the
    consumer's ``on_decode_error``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except Exception:
            self.errors = [sys.exc_info()]
            self.channel = kwargs.get("channel")
            self.body, self.headers, self.properties, self.delivery_info = None, {}, {}, {}
            self.delivery_tag = self.content_type = self.content_encoding = None
            self.accept, self._decoded_cache, self._state = None, None, "RECEIVED"


@functools.cache
def _deferring(message_class: type) -> type:
    # _DeferredDecompression sits between the transport's Message and kombu's
    # base Message in the MRO: the transport's __init__ builds the headers,
    # ours takes compression off them before the base class inflates the body.
    bases = (_UnreadableMessage, message_class, _DeferredDecompression)
    return type(message_class.__name__, bases, {})


def defer_decompression(channel: Any) -> None:
    """Make ``channel`` (any kombu transport's) build messages that leave their
    body compressed, for :func:`decode_body` to inflate with a cap, and that
    report an unreadable envelope as a decode error."""
    message_class = getattr(channel, "Message", None)
    if isinstance(message_class, type) and issubclass(message_class, KombuMessage):
        channel.Message = _deferring(message_class)


def decode_body(message: Any, max_decompressed: int = redis_fanout.MAX_DECOMPRESSED_BYTES) -> Any:
    """The body of a kombu event message (see :func:`redis_fanout.decode_body`).

    On a channel set up by :func:`defer_decompression` the body is still
    compressed; on one that could not be (a transport with no kombu Message
    class), kombu has inflated it already, and the cap is checked after.
    """
    body = message.body
    compression = getattr(message, "deferred_compression", None)
    if (
        compression is None
        and isinstance(message.headers, dict)
        and message.headers.get("compression")
        and len(body) > max_decompressed
    ):
        raise redis_fanout.UndecodableMessage(f"body is over {max_decompressed} bytes")
    return redis_fanout.decode_body(
        body, message.content_type, message.content_encoding, compression, max_decompressed
    )


class Receiver:
    """Consume the broker's events into the store.

    ``direct_redis`` (on by default) reads a Redis broker's pub/sub directly
    (:mod:`monitor.redis_fanout`); off, or on any other broker, events come
    through a kombu consumer.
    """

    def __init__(
        self, settings: Settings, app: Celery | None = None, *, direct_redis: bool = True
    ) -> None:
        self.settings = settings
        self.direct_redis = direct_redis
        self.app = make_app(settings, app)
        self.writer = BufferedWriter(
            lambda: Store.from_settings(settings),
            capacity=settings.buffer_size,
            batch_size=settings.batch_size,
            flush_interval=settings.flush_interval,
            block_when_full=True,
            source="event",
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()
        #: how the broker is read, once connected (log line, tests)
        self.reading: str | None = None
        self.received = 0
        self.malformed = 0
        #: times the broker connection was lost and re-established (tests, logs)
        self.reconnects = 0
        self._max_decompressed = settings.max_decompressed_bytes
        self._build = functools.partial(
            TaskEvent.from_celery_event,
            max_extra_fields=settings.max_extra_fields,
            max_field_bytes=settings.max_field_bytes,
        )
        self._malformed_unreported = 0
        self._last_malformed_log = -math.inf  # the first one is always logged
        self._malformed_logged = 0  # self.malformed at the last log line
        self._last_meta = 0.0  # last _report_malformed_now_and_then
        self._meta_store: Store | None = None
        #: task name -> positions of its redacted parameters (_redact_positional)
        self._secret_positions: dict[Any, tuple[int, ...]] = {}

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> Receiver:
        """Consume in a daemon thread (embedded use)."""
        self._thread = threading.Thread(target=self.run, name="monitor-events", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.writer.close(timeout)
        if self._meta_store is not None:
            self._meta_store.close()

    def run(self) -> None:
        """Consume until :meth:`stop`, reconnecting to the broker with capped backoff."""
        enabler = None
        if self.settings.enable_events:
            enabler = threading.Thread(
                target=self._enable_events_loop, name="monitor-enable-events", daemon=True
            )
            enabler.start()
        backoff = RECONNECT_START
        while not self._stop.is_set():
            try:
                self._consume()
                backoff = RECONNECT_START
            except Exception as exc:  # kombu raises transport-specific errors
                if self.connected.is_set():
                    backoff = RECONNECT_START  # lost a working connection: a new outage
                self.connected.clear()
                if self._stop.is_set():
                    break
                self.reconnects += 1
                logger.warning(
                    "monitor: event receiver lost the broker (%s: %s); reconnecting in %.1fs",
                    type(exc).__name__,
                    mask_url(str(exc)),
                    backoff,
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX)

    # -- consuming ---------------------------------------------------------------
    def _queue(self, conn: Connection) -> Queue:
        conf = self.app.conf
        # Celery's own choice of exchange type: topic, but fanout on Redis.
        exchange = get_exchange(conn, name=conf.event_exchange)
        return Queue(
            f"{conf.event_queue_prefix}.monitor.{uuid.uuid4().hex}",
            exchange=exchange,
            routing_key="#",
            auto_delete=True,
            durable=False,
            message_ttl=conf.event_queue_ttl,
            expires=conf.event_queue_expires,
        )

    def _consume(self) -> None:
        # The app's connection: its broker_transport_options (global_keyprefix,
        # fanout_prefix ...), TLS and failover settings apply, as for its workers.
        with self.app.connection_for_read(heartbeat=10) as conn:
            # One try: the loop in run() does the backing off (kombu's own
            # retry would add its interval_start, 2 s, to every attempt).
            conn.ensure_connection(max_retries=0)
            # kombu's own Redis transports (plain and Sentinel): their wire format
            # is what redis_fanout reads; any other transport goes through kombu.
            if self.direct_redis and isinstance(conn.transport, kombu_redis.Transport):
                self._consume_redis_pubsub(conn)
            else:
                self._consume_kombu(conn)
        self._report_malformed()

    def _consume_redis_pubsub(self, conn: Connection) -> None:
        pubsub = redis_fanout.subscribe(conn.default_channel, self.app.conf.event_exchange)
        try:
            self._connected(conn, "reading its pub/sub directly")
            on_payload = self._on_payload
            while not self._stop.is_set():
                for payload in redis_fanout.payloads(pubsub, timeout=0.5):
                    on_payload(payload)
                self._report_malformed_now_and_then()
        finally:
            pubsub.close()

    def _on_payload(self, payload: bytes) -> None:
        try:
            body = redis_fanout.decode(payload, self._max_decompressed)
        except Exception as exc:  # UndecodableMessage; anything else would be our bug
            self._on_decode_error(payload, exc)
            return
        self._on_message(body, None)

    def _connected(self, conn: Connection, how: str) -> None:
        self.reading = how
        if not self.connected.is_set():
            # kombu's as_uri() masks the password (redis://:**@host)
            logger.warning("monitor: event receiver connected to %s (%s)", conn.as_uri(), how)
        self.connected.set()

    def _consume_kombu(self, conn: Connection) -> None:
        channel = conn.channel()
        defer_decompression(channel)
        consumer = Consumer(
            channel,
            queues=[self._queue(conn)],
            on_message=self._on_raw_message,
            on_decode_error=self._on_decode_error,
            no_ack=True,
            accept=redis_fanout.ACCEPT,  # the same list on both paths
        )
        broken = conn.connection_errors + conn.channel_errors
        in_a_row = 0
        with consumer:
            self._connected(conn, "through a kombu consumer")
            while not self._stop.is_set():
                try:
                    conn.drain_events(timeout=0.5)
                    in_a_row = 0
                except TimeoutError:
                    conn.heartbeat_check()
                except broken:
                    raise
                except Exception as exc:
                    # kombu's Redis transport decodes each envelope itself and
                    # lets a RecursionError (JSON nested 5,000 deep) through:
                    # one message, not the connection.
                    in_a_row += 1
                    if in_a_row >= KOMBU_ERRORS_IN_A_ROW:
                        raise
                    self._on_decode_error(None, exc)
                self._report_malformed_now_and_then()

    def _on_raw_message(self, message: Any) -> None:
        # kombu calls this outside its own error handling: an exception here
        # would reach drain_events and cost the connection.
        try:
            body = decode_body(message, self._max_decompressed)
        except Exception as exc:  # UndecodableMessage; anything else would be our bug
            self._on_decode_error(message, exc)
            return
        self._on_message(body, message)

    def _on_message(self, body: Any, message: Any) -> None:
        build = self._build
        # Celery >= 4 batches task events in lists (routing key task.multi).
        for event in body if isinstance(body, list) else (body,):
            self.received += 1
            try:
                record = build(event)
            except MalformedEvent as exc:
                self._count_malformed(str(exc))
                continue
            except Exception as exc:  # a bug of ours: one event lost, not the receiver
                self._count_malformed(f"unexpected {type(exc).__name__} (a bug): {exc}")
                continue
            if record is not None:
                if type(record) is TaskEvent and "args" in record.fields:
                    self._redact_positional(record)
                self.writer.put(record)

    def _redact_positional(self, record: TaskEvent) -> None:
        """Hide the args a task takes under a redacted parameter name, when the
        app given with ``-A`` has the task registered (the hooks do the same)."""
        name = record.fields.get("name")
        positions = self._secret_positions.get(name)
        if positions is None:
            try:  # finalizes the app once (its @app.task functions are pending until then)
                task = self.app.tasks.get(name)
            except Exception:  # noqa: BLE001 - a user's app that cannot finalize: no names
                logger.debug("monitor: cannot read the app's tasks", exc_info=True)
                task = None
            redact = self.settings.redact
            positions = sensitive_positions(task.run, redact) if task is not None else ()
            if len(self._secret_positions) >= 1024:  # any name may come by
                self._secret_positions.clear()
            self._secret_positions[name] = positions
        if positions:
            record.fields["args"] = redact_args_repr(record.fields["args"], positions)  # type: ignore[index]

    def _on_decode_error(self, message: Any, exc: Exception) -> None:
        if isinstance(exc, MalformedEvent):
            self._count_malformed(f"undecodable message: {exc}")
        else:  # kombu's own (a virtual transport's envelope, a Message it cannot build)
            self._count_malformed(f"undecodable message ({type(exc).__name__}: {exc})")

    def _count_malformed(self, why: str) -> None:
        self.malformed += 1
        self._malformed_unreported += 1
        now = time.monotonic()
        if now - self._last_malformed_log > MALFORMED_LOG_EVERY:
            self._last_malformed_log = now
            logger.warning(
                "monitor: skipped %d malformed event(s) since the last report; this one: %.300s",
                self.malformed - self._malformed_logged,
                why,
            )
            self._malformed_logged = self.malformed

    def _report_malformed_now_and_then(self) -> None:
        """Called from the consuming loops: one Redis write a second at most."""
        now = time.monotonic()
        if now - self._last_meta > 1.0:
            self._last_meta = now
            self._report_malformed()

    def _report_malformed(self) -> None:
        n = self._malformed_unreported
        if not n:
            return
        try:
            if self._meta_store is None:
                self._meta_store = Store.from_settings(self.settings)
            self._meta_store.incr_meta({"malformed:event": n})
            self._malformed_unreported -= n
        except redis.RedisError:
            pass  # counted again next time

    def _enable_events_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.app.control.enable_events()
            except Exception as exc:
                logger.debug("monitor: enable_events broadcast failed: %s", exc)
            self._stop.wait(self.settings.enable_events_interval)
