"""celery monitor: every Celery task's lifecycle in Redis, live in the browser."""

from __future__ import annotations

__version__ = "0.1.0"
