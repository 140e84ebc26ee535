"""The web tier: Flask app factory, embedding in a host app, the Socket.IO object.

``create_app(settings)`` builds the standalone dashboard; ``init_app(flask_app,
url_prefix="/monitor")`` mounts the same pages, API, metrics and Socket.IO
endpoint inside an existing Flask application. Per-app objects (Settings, Store,
live Hub, worker inspector) live in ``app.extensions["monitor"]``. Pass your
Celery app as ``celery_app=`` so ``/api/workers?refresh=1`` inspects workers
through your broker settings (otherwise MONITOR_BROKER_URL, else the store's
Redis, as the receiver does).

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

from ..config import Settings
from ..store import Store
from .blueprint import bp
from .inspect import WorkerInspector

logger = logging.getLogger(__name__)

__all__ = ["create_app", "init_app", "socketio", "bp"]

socketio = SocketIO()
_handlers_registered = False


@dataclass
class MonitorExtension:
    settings: Settings
    store: Store
    hub: Any
    url_prefix: str
    inspector: WorkerInspector


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
    )
    return app


def init_app(
    flask_app: Flask,
    url_prefix: str = "/monitor",
    settings: Settings | None = None,
    message_queue: str | None = None,
    celery_app: Any = None,
    **overrides: Any,
) -> Flask:
    """Mount the dashboard on ``flask_app`` under ``url_prefix``.

    ``overrides`` are Settings fields (``redis_url=...``, ``prefix=...``) applied
    on top of ``settings`` (or of the MONITOR_* environment).
    """
    from .api import api
    from .flower_api import flower
    from .live import Hub, register_handlers
    from .metrics import metrics_bp
    from .openapi import openapi_bp

    global _handlers_registered
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
    flask_app.register_blueprint(bp, url_prefix=prefix or None)
    flask_app.register_blueprint(api, url_prefix=prefix + "/api/v1")
    flask_app.register_blueprint(flower, url_prefix=prefix + "/api")
    flask_app.register_blueprint(openapi_bp, url_prefix=prefix + "/api")
    flask_app.register_blueprint(metrics_bp, url_prefix=prefix or None)

    options: dict[str, Any] = {
        "async_mode": async_mode(),
        "path": (prefix + "/socket.io").lstrip("/"),
        "cors_allowed_origins": None,
    }
    if message_queue:
        options["message_queue"] = message_queue
        # One channel per key prefix: two monitors on one Redis never mix rooms.
        options["channel"] = f"{settings.prefix}-socketio"
    if not _handlers_registered:
        # Before the first init_app: Flask-SocketIO then keeps the handlers
        # and installs them on the server of every app initialised later.
        register_handlers(socketio)
        _handlers_registered = True
    socketio.init_app(flask_app, **options)
    hub = Hub(socketio, settings, shared=bool(message_queue))
    flask_app.extensions["monitor"] = MonitorExtension(
        settings=settings,
        store=Store.from_settings(settings),
        hub=hub,
        url_prefix=prefix,
        inspector=WorkerInspector(settings, celery_app),
    )
    return flask_app
