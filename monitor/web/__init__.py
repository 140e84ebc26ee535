"""The web tier: Flask app factory, embedding in a host app, each app's Socket.IO server.

``create_app(settings)`` builds the standalone dashboard; ``init_app(flask_app,
url_prefix="/monitor")`` mounts the same pages, API, metrics and Socket.IO
endpoint inside an existing Flask application. Per-app objects (Settings, Store,
live Hub, worker inspector, the Socket.IO server) live in
``app.extensions["monitor"]``. Pass your Celery app as ``celery_app=`` so
``/api/workers?refresh=1`` inspects workers through your broker settings
(otherwise MONITOR_BROKER_URL, else the store's Redis, as the receiver does)
and ``/beat`` lists its ``beat_schedule`` and celery-redbeat entries.

Socket.IO: every app gets a ``SocketIO`` of its own, served at
``<url_prefix>/socket.io``, and a host's ``app.extensions["socketio"]`` is left
as it was (Flask-SocketIO's ``init_app`` would overwrite it). A host that wants
one Socket.IO endpoint passes its own: ``init_app(app, socketio=host_socketio)``;
the monitor's handlers then live in the ``/monitor`` namespace, so they never
answer the host's events nor the host's handlers ours. On a server of its own the
monitor uses the default namespace ``/``.

The Socket.IO async mode follows the process: ``gevent`` when
:func:`monitor.web.server.run_server` has monkey-patched the standard library,
``threading`` otherwise (tests, ``flask run``, a host app under gunicorn threads).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

from flask import Flask
from flask_socketio import SocketIO

from ..audit import AuditLog
from ..auth import AuthStore, default_allowed_hosts
from ..config import Settings
from ..jobs import Job, JobRunner
from ..store import Store
from .blueprint import bp
from .inspect import WorkerInspector

logger = logging.getLogger(__name__)

__all__ = ["create_app", "init_app", "bp", "HOST_NAMESPACE"]

#: The monitor's namespace on a host's Socket.IO server.
HOST_NAMESPACE = "/monitor"


@dataclass
class MonitorExtension:
    settings: Settings
    store: Store
    hub: Any
    url_prefix: str
    inspector: WorkerInspector
    #: This app's Socket.IO server: the monitor's own, or the host's.
    socketio: SocketIO
    #: Namespace of the monitor's handlers on ``socketio``.
    namespace: str = "/"
    #: True when ``socketio`` is the monitor's own (not shared with the host).
    own_socketio: bool = True
    #: Users, tokens, throttling (monitor.auth) and the audit log (monitor.audit).
    auth: Any = None
    audit: Any = None
    #: Operator actions (monitor.actions.Controller), built on first use.
    controller: Any = None
    #: Host header allow-list (empty: not enforced; see monitor.web.security).
    allowed_hosts: tuple[str, ...] = ()
    #: (monotonic time, answer) of the last "are users configured?" question.
    users_cache: Any = None
    #: The elected jobs' runner (monitor.jobs.JobRunner), when this process runs one.
    jobs: Any = None
    #: The user's Celery app (create_app(celery_app=...), serve -A): its beat_schedule ...
    celery_app: Any = None

    @property
    def socketio_path(self) -> str:
        """The URL path the page connects to (the host's, on a host's server)."""
        if self.own_socketio:
            return self.url_prefix + "/socket.io"
        middleware = getattr(self.socketio, "sockio_mw", None)
        path = getattr(middleware, "engineio_path", None) or "/socket.io/"
        return "/" + path.strip("/")


def async_mode() -> str:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return "threading"
    return "gevent" if monkey.is_module_patched("socket") else "threading"


def _normalise_prefix(url_prefix: str | None) -> str:
    prefix = (url_prefix or "").strip()
    if not prefix or prefix == "/":
        return ""
    return "/" + prefix.strip("/")


def create_app(
    settings: Settings | None = None, message_queue: Any = False, celery_app: Any = None
) -> Flask:
    """The standalone dashboard. ``message_queue=False`` means: settings' queue or redis_url."""
    settings = settings or Settings.from_env()
    app = Flask(__name__, static_folder=None)  # the blueprint serves /static
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False
    if message_queue is False:
        message_queue = settings.message_queue or settings.redis_url
    init_app(
        app,
        url_prefix=settings.url_prefix,
        settings=settings,
        message_queue=message_queue,
        celery_app=celery_app,
        _standalone=True,
    )
    return app


def _own_socketio(
    flask_app: Flask, prefix: str, settings: Settings, message_queue: str | None
) -> SocketIO:
    """A Socket.IO server for this app only, leaving the host's extension in place."""
    path = (prefix + "/socket.io").lstrip("/")
    host = flask_app.extensions.get("socketio")
    host_mw = getattr(host, "sockio_mw", None)
    if host_mw is not None and host_mw.engineio_path.strip("/") == path:
        raise ValueError(
            f"the host's Socket.IO server already serves /{path}: mount the monitor under "
            "another url_prefix, or pass the host's server: init_app(app, socketio=...)"
        )
    options: dict[str, Any] = {
        "async_mode": async_mode(),
        "path": path,
        "cors_allowed_origins": None,
        # One event at a time per connection, in order: a client cannot have a
        # hundred subscribes in flight, and once it is closed for abuse what it
        # sent meanwhile is dropped (see below) instead of each spawning a handler.
        "async_handlers": False,
    }
    if message_queue:
        options["message_queue"] = message_queue
        # One channel per key prefix: two monitors on one Redis never mix rooms.
        options["channel"] = f"{settings.prefix}-socketio"
    own = SocketIO()
    missing = object()
    previous = flask_app.extensions.get("socketio", missing)
    own.init_app(flask_app, **options)
    _drop_messages_once_closed(own.server)
    # Flask-SocketIO's init_app claims app.extensions["socketio"]; give it back,
    # so the host's handlers' emit()/join_room() keep reaching the host's server.
    if previous is missing:
        flask_app.extensions.pop("socketio", None)
    else:
        flask_app.extensions["socketio"] = previous
    return own


def _drop_messages_once_closed(server: Any) -> None:
    """Messages of a closed connection are dropped before they are decoded.

    A WebSocket client that writes thousands of messages at once has them read
    ahead of the handlers; when the monitor closes it for abuse, Engine.IO still
    hands each buffered message to Socket.IO, which decodes it before finding
    the connection gone (0.1 ms each, seconds for a flood). This checks first.
    """
    eio = server.eio
    handle = eio.handlers["message"]

    def message(eio_sid: str, data: Any) -> Any:
        socket = eio.sockets.get(eio_sid)
        if socket is None or socket.closed or socket.closing:
            return None
        return handle(eio_sid, data)

    eio.on("message", message)


def cluster_jobs(settings: Settings) -> list[Job]:
    """Every elected job: the queue sampler, the alert evaluator, the reconciler."""
    from .. import alerts, lost, queues

    return [*queues.jobs(settings), *alerts.jobs(settings), *lost.jobs(settings)]


def init_app(
    flask_app: Flask,
    url_prefix: str = "/monitor",
    settings: Settings | None = None,
    message_queue: str | None = None,
    celery_app: Any = None,
    socketio: SocketIO | None = None,
    run_jobs: bool = False,
    _standalone: bool = False,
    **overrides: Any,
) -> Flask:
    """Mount the dashboard on ``flask_app`` under ``url_prefix``.

    ``socketio``: the host's ``SocketIO`` to share (initialised before or after
    this call); the monitor then registers its handlers in the ``/monitor``
    namespace and ``message_queue`` is the host's business. Without it the
    monitor runs a Socket.IO server of its own at ``<url_prefix>/socket.io``.
    ``run_jobs``: run the elected jobs (queue sampler, alert evaluator,
    reconciler) in this process too; ``monitor serve`` always does, and one
    process per cluster is enough.
    ``overrides`` are Settings fields (``redis_url=...``, ``prefix=...``) applied
    on top of ``settings`` (or of the MONITOR_* environment).
    """
    from . import security
    from .actions_api import actions_api
    from .alerts_api import alerts_api
    from .api import api
    from .beat_api import beat_api
    from .flower_api import flower
    from .flower_control import flower_control
    from .history_api import history_api
    from .live import Hub, register_handlers
    from .lost_api import lost_api
    from .metrics import metrics_bp
    from .openapi import openapi_bp
    from .queues_api import flower_queues, queues_api
    from .task_names_api import task_names_api

    if settings is None:
        settings = Settings.from_env(**overrides)
    elif overrides:
        settings = settings.replace(**overrides)
    prefix = _normalise_prefix(url_prefix)
    settings = settings.replace(url_prefix=prefix)
    try:
        importlib.import_module("monitor.web.pages")  # frontend routes register on bp
    except ModuleNotFoundError as exc:
        if exc.name != "monitor.web.pages":
            raise
        logger.debug("monitor.web.pages not available: API only")
    blueprints = [
        (bp, prefix or None),
        (api, prefix + "/api/v1"),
        (actions_api, prefix + "/api/v1"),
        (beat_api, prefix + "/api/v1"),
        (history_api, prefix + "/api/v1"),
        (task_names_api, prefix + "/api/v1"),
        (alerts_api, prefix + "/api/v1"),
        (flower, prefix + "/api"),
        (flower_control, prefix + "/api"),
        (openapi_bp, prefix + "/api"),
        (metrics_bp, prefix or None),
        (queues_api, prefix + "/api/v1"),
        (flower_queues, prefix + "/api"),
        (lost_api, prefix + "/api/v1"),
    ]
    for blueprint, at in blueprints:
        if not getattr(blueprint, "_monitor_protected", False):
            # Once per blueprint object, whatever the number of apps built.
            security.protect(blueprint)
            if blueprint is bp:
                security.register_login(bp)
            if blueprint is api:
                security.register_me(api)
            blueprint._monitor_protected = True  # type: ignore[attr-defined]
        flask_app.register_blueprint(blueprint, url_prefix=at)

    if socketio is None:
        sio, namespace, own = _own_socketio(flask_app, prefix, settings, message_queue), "/", True
    else:
        sio, namespace, own = socketio, HOST_NAMESPACE, False
    hub = Hub(sio, settings, namespace=namespace)
    register_handlers(sio, hub, namespace)
    store = Store.from_settings(settings)
    if settings.allowed_hosts or _standalone:
        # Against DNS rebinding. Embedded, the host app knows its names; we
        # check them only when told (MONITOR_ALLOWED_HOSTS).
        allowed_hosts = default_allowed_hosts(settings)
    else:
        allowed_hosts = ()
    inspector = WorkerInspector(settings, celery_app)
    ext = MonitorExtension(
        settings=settings,
        store=store,
        hub=hub,
        url_prefix=prefix,
        inspector=inspector,
        socketio=sio,
        namespace=namespace,
        own_socketio=own,
        auth=AuthStore(store.redis, store.keys, settings),
        audit=AuditLog(store.redis, store.keys, settings),
        allowed_hosts=allowed_hosts,
        celery_app=celery_app,
    )
    # The elected jobs (monitor.jobs), each run by whichever process holds its
    # lease: `monitor serve` starts them; an embedded dashboard with run_jobs=True
    # starts them with its live tailer (its first Socket.IO connection, so after
    # any fork of a pre-forking server).
    ext.jobs = JobRunner(
        store,
        settings,
        cluster_jobs(settings),
        celery_app,
        spawn=sio.start_background_task,
        inspector=inspector,  # one set of broadcasts and one cache for pages and jobs
    )
    if run_jobs:
        hub.companions.append(ext.jobs)
    flask_app.extensions["monitor"] = ext
    if celery_app is not None:
        from .. import beat

        beat.bind_app(settings, celery_app)  # the live "beat" room holds only a Store
    security.configure_app(flask_app, ext, _standalone)
    return flask_app
