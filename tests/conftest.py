"""Fixtures: real Redis with a private key prefix per test, clean MONITOR_* env."""

from __future__ import annotations

import os
import uuid

import pytest

from monitor.config import Settings
from monitor.store import Store, redis_client

from .helpers import AMQP_URL, REDIS_URL, require_service


@pytest.fixture(autouse=True)
def _clean_monitor_env(monkeypatch):
    """Inherited MONITOR_* variables must not leak into tests (Flask does the same)."""
    for name in list(os.environ):
        if name.startswith("MONITOR_"):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def redis_url() -> str:
    require_service("127.0.0.1", 6379, "Redis")
    return REDIS_URL


@pytest.fixture
def amqp_url() -> str:
    require_service("127.0.0.1", 5672, "RabbitMQ")
    return AMQP_URL


@pytest.fixture
def prefix() -> str:
    return "mt-" + uuid.uuid4().hex[:10]


@pytest.fixture
def settings(redis_url, prefix) -> Settings:
    return Settings(redis_url=redis_url, prefix=prefix)


@pytest.fixture
def store(settings):
    store = Store(redis_client(settings.redis_url), settings)
    yield store
    store.delete_all()
    store.close()


@pytest.fixture
def app(settings):
    """The standalone dashboard on the test's prefix (no Socket.IO message queue)."""
    from monitor.web import create_app

    return create_app(settings, message_queue=None)


@pytest.fixture
def client(app):
    return app.test_client()
