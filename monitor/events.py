"""The Celery event receiver: broker ``celeryev`` exchange -> TaskEvent -> store.

Consumes every event (task-*, including task-sent and custom events such as
task-progress; worker-*; and Celery's batched ``task.multi`` lists) from an
auto-delete queue bound to the event exchange, exactly as Celery's own
``EventReceiver`` binds it, but decodes messages itself: a malformed body costs
a counted, rate-limited log line, never the consumer. Records go through a
:class:`~monitor.writer.BufferedWriter` in blocking mode: while Redis is away
the receiver stops consuming and events wait in the broker.

Usable as a library (``Receiver(settings).start()`` / ``.stop()``, embedded in
``monitor serve``) and from the CLI (``python -m monitor events``: ``run()``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import redis
from celery import Celery
from celery.events.event import get_exchange
from kombu import Connection, Consumer, Queue
from kombu.transport import redis as kombu_redis

from . import redis_fanout
from .config import Settings
from .model import MalformedEvent, TaskEvent
from .store import Store
from .writer import BufferedWriter

logger = logging.getLogger(__name__)

#: Capped exponential backoff for broker reconnects (seconds).
RECONNECT_START = 0.5
RECONNECT_MAX = 10.0
#: Seconds between two log lines about malformed events.
MALFORMED_LOG_EVERY = 10.0


def make_app(settings: Settings, app: Celery | None = None) -> Celery:
    """The Celery app whose broker we listen on: the user's (``-A``) or our own."""
    if app is None:
        app = Celery("monitor", broker=settings.broker_url or settings.redis_url)
    elif settings.broker_url:
        app.conf.broker_url = settings.broker_url
    app.conf.broker_connection_retry_on_startup = True
    return app


def decode_body(message: Any) -> Any:
    """The body of a kombu event message (see :func:`redis_fanout.decode_body`).

    kombu's ``Message`` has already decompressed the body (the ``compression``
    header stays): it is passed on as uncompressed.
    """
    return redis_fanout.decode_body(
        message.body, message.content_type, message.content_encoding, None
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
        self._malformed_unreported = 0
        self._last_malformed_log = 0.0
        self._last_meta = 0.0  # last _report_malformed_now_and_then
        self._meta_store: Store | None = None

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
                self.connected.clear()
                if self._stop.is_set():
                    break
                logger.warning(
                    "monitor: event receiver lost the broker (%s: %s); reconnecting in %.1fs",
                    type(exc).__name__,
                    exc,
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
            conn.ensure_connection(max_retries=1)
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
            body = redis_fanout.decode(payload)
        except Exception as exc:  # not kombu's envelope, or a body no serializer takes
            self._on_decode_error(payload, exc)
            return
        self._on_message(body, None)

    def _connected(self, conn: Connection, how: str) -> None:
        self.reading = how
        if not self.connected.is_set():
            logger.warning("monitor: event receiver connected to %s (%s)", conn.as_uri(), how)
        self.connected.set()

    def _consume_kombu(self, conn: Connection) -> None:
        consumer = Consumer(
            conn.channel(),
            queues=[self._queue(conn)],
            on_message=self._on_raw_message,
            on_decode_error=self._on_decode_error,
            no_ack=True,
            accept=redis_fanout.ACCEPT,  # the same list on both paths
        )
        with consumer:
            self._connected(conn, "through a kombu consumer")
            while not self._stop.is_set():
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    conn.heartbeat_check()
                self._report_malformed_now_and_then()

    def _on_raw_message(self, message: Any) -> None:
        try:
            body = decode_body(message)
        except Exception as exc:  # any serializer's error: count it, keep consuming
            self._on_decode_error(message, exc)
            return
        self._on_message(body, message)

    def _on_message(self, body: Any, message: Any) -> None:
        # Celery >= 4 batches task events in lists (routing key task.multi).
        for event in body if isinstance(body, list) else (body,):
            self.received += 1
            try:
                record = TaskEvent.from_celery_event(event)
            except MalformedEvent as exc:
                self._count_malformed(str(exc))
                continue
            if record is not None:
                self.writer.put(record)

    def _on_decode_error(self, message: Any, exc: Exception) -> None:
        self._count_malformed(f"undecodable message ({type(exc).__name__}: {exc})")

    def _count_malformed(self, why: str) -> None:
        self.malformed += 1
        self._malformed_unreported += 1
        now = time.monotonic()
        if now - self._last_malformed_log > MALFORMED_LOG_EVERY:
            self._last_malformed_log = now
            logger.warning("monitor: skipped a malformed event: %.300s", why)

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
