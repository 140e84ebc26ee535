"""``monitor serve``: the dashboard on gevent's WSGI server, with the event receiver embedded.

Async mode: **gevent**. ``run_server`` monkey-patches the standard library, then
Flask-SocketIO serves the app on ``gevent.pywsgi.WSGIServer`` with WebSocket
through simple-websocket (and HTTP long-polling). Why gevent rather than
threading: Flask-SocketIO's threading mode has no production server installed
here that exposes WebSocket (only Werkzeug's development server, or gunicorn
threads); gevent is a dependency, handles thousands of idle long-poll and
WebSocket connections as greenlets, and its patched sockets let the embedded
receiver (kombu, redis-py) and the live tailer (XREAD BLOCK) run as
cooperative green threads in the same process.

Production, behind a reverse proxy (one worker per process: Socket.IO needs
sticky sessions; scale with several processes sharing the message queue)::

    gunicorn -k gevent -w 1 -b 127.0.0.1:5555 'monitor.web.server:gunicorn_app()'

``gunicorn_app`` builds the app from MONITOR_* variables and starts the event
receiver unless ``MONITOR_SERVE_EVENTS=0`` (the gevent worker has patched
the standard library before importing it).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from ..config import mask_url

logger = logging.getLogger(__name__)


def monkey_patch() -> None:
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        # Late patching (after click, celery, redis imported) is safe here:
        # no thread or socket exists yet, only modules. gevent warns that ssl
        # was imported (by urllib3/redis at import time); the modules it names
        # hold references to ssl classes, not to sockets, so the warning is moot.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", monkey.MonkeyPatchWarning)
            monkey.patch_all()


def _wsgi_server(flask_app: Any, host: str, port: int) -> Any:
    """gevent's WSGI server with TCP_NODELAY on every connection, and fair reads.

    Without TCP_NODELAY, a keep-alive client (requests.Session, browsers) waits
    for the tail of a response on Nagle + delayed ACK: +40 ms per API call.

    Fair reads: simple-websocket's reader parses whatever the kernel holds
    without yielding, so a client that writes 20,000 messages at once held the
    whole process (every other client's live updates) until they were parsed.
    Each ``recv`` on a connection now lets the other greenlets run first.
    """
    import socket

    import gevent
    from gevent import pywsgi
    from gevent import socket as gsocket

    class FairSocket(gsocket.socket):
        __slots__ = ()

        def recv(self, *args: Any) -> bytes:
            gevent.sleep(0)
            return super().recv(*args)

    class Server(pywsgi.WSGIServer):
        def handle(self, sock: Any, address: Any) -> None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # a unix socket or an already closed one
                pass
            if type(sock) is gsocket.socket:
                sock.__class__ = FairSocket  # same layout: only recv differs
            super().handle(sock, address)

    return Server((host, port), flask_app, log=None)


def _events_status(receiver: Any) -> str:
    if receiver is None:
        return "off"
    return "on" if receiver.connected.is_set() else "reconnecting"


def build(settings: Any, events: bool = True, app: Any = None) -> tuple[Any, Any]:
    """The Flask app and the started receiver (or None)."""
    from . import create_app

    flask_app = create_app(settings, celery_app=app)
    receiver = None
    if events:
        from ..events import Receiver

        receiver = Receiver(settings, app).start()
    ext = flask_app.extensions["monitor"]
    hub = ext.hub
    hub.events_status = lambda: _events_status(receiver)
    hub.ensure_started()
    ext.jobs.start()  # the elected jobs (built by init_app; stopped by run_server)
    return flask_app, receiver


def _stop_on_signals(server: Any) -> None:
    """SIGTERM/SIGINT stop the server through gevent's own signal watchers.

    A Python-level handler raising KeyboardInterrupt is not enough under
    gevent: when the signal lands while the hub runs, the exception is raised
    in the hub and the server keeps serving (seen in tests about one time in two).
    """
    import signal

    import gevent

    def stop() -> None:
        gevent.spawn(server.stop, 2)

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop)


def warn_if_exposed(settings: Any, ext: Any) -> bool:
    """Bound beyond loopback with no user: anyone who reaches the port reads
    everything. Say so (actions stay off without users). True when warned."""
    import ipaddress

    host = settings.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    try:
        configured = ext.auth.users_configured()
    except Exception:  # noqa: BLE001 - Redis away at start-up: warn, to be safe
        configured = False
    if loopback or configured:
        return False
    logger.warning(
        "monitor: serving on %s with no user configured: anyone who reaches this port can "
        "read every task (actions stay off). Add one with `python -m monitor users add "
        "NAME --role operator`, or bind to 127.0.0.1.",
        host,
    )
    return True


def run_server(settings: Any, events: bool = True, app: Any = None) -> None:
    """Serve until KeyboardInterrupt (Ctrl-C, or SIGTERM through the CLI)."""
    monkey_patch()
    flask_app, receiver = build(settings, events, app)
    ext = flask_app.extensions["monitor"]
    hub = ext.hub
    prefix = settings.url_prefix or ""
    logger.info(
        "celery monitor on http://%s:%d%s/ (redis %s, prefix %r, events %s)",
        settings.host,
        settings.port,
        prefix,
        mask_url(settings.redis_url),
        settings.prefix,
        "on" if events else "off",
    )
    warn_if_exposed(settings, ext)
    server = _wsgi_server(flask_app, settings.host, settings.port)
    ext.socketio.wsgi_server = server  # SocketIO.stop() stops it
    _stop_on_signals(server)
    try:
        server.serve_forever()
    finally:
        server.stop(timeout=2)
        hub.stop()
        if ext.jobs is not None:
            ext.jobs.stop()  # releases the leases: another process takes over at once
        if receiver is not None:
            receiver.stop()
        logger.info("celery monitor stopped")


def gunicorn_app() -> Any:
    """WSGI app for ``gunicorn -k gevent -w 1 'monitor.web.server:gunicorn_app()'``."""
    from ..config import Settings

    settings = Settings.from_env()
    flask_app, _receiver = build(settings, settings.serve_events)
    return flask_app
