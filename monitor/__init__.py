"""celery monitor: every Celery task's lifecycle in Redis, live in the browser.

``monitor.signals.connect(celery_app)`` adds the recording hooks to a producer
or worker; ``monitor.init_app(flask_app)`` mounts the dashboard in a Flask app;
``monitor.create_app()`` builds the standalone dashboard. The web names are
imported lazily so that a Celery worker using only the hooks never imports Flask.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["create_app", "init_app", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "init_app"):
        from . import web

        return getattr(web, name)
    raise AttributeError(f"module 'monitor' has no attribute {name!r}")
