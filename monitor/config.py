"""Settings: defaults < ``MONITOR_*`` environment variables < explicit overrides.

This is the only module that reads ``os.environ``. Everything is parsed once
into a frozen :class:`Settings`; a bad value raises :class:`ConfigError` naming
the variable, so a typo fails at start-up instead of at 3 a.m.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

ENV_PREFIX = "MONITOR_"


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message names the setting."""


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _parse_names(text: str) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in text.split(",") if part.strip())


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise ValueError(f"must be > 0, got {text!r}")
        return value

    return parse


def _non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < 0:
            raise ValueError(f"must be >= 0, got {text!r}")
        return value

    return parse


def _prefix(text: str) -> str:
    if not text or any(ch in text for ch in " {}\n\t"):
        raise ValueError(f"must be non-empty, without spaces or braces, got {text!r}")
    return text


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text.startswith(tuple(s + "://" for s in schemes)):
            raise ValueError(f"expected a URL starting with one of {schemes}, got {text!r}")
        return text

    return parse


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda text: parse(text) if text else None


def _setting(default: Any, parse: Callable[[str], Any], help: str) -> Any:
    return field(default=default, metadata={"parse": parse, "help": help})


_REDIS_URL = _url(("redis", "rediss", "unix"))


@dataclass(frozen=True)
class Settings:
    """Every knob of the monitor. ``MONITOR_<NAME>`` sets ``<name>``."""

    redis_url: str = _setting(
        "redis://127.0.0.1:6379/0", _REDIS_URL, "Redis that stores the monitor's data"
    )
    broker_url: str | None = _setting(
        None,
        _optional(str),
        "Celery broker the event receiver listens on (default: the app's broker, else redis_url)",
    )
    prefix: str = _setting("monitor", _prefix, "prefix of every Redis key the monitor writes")
    max_tasks: int = _setting(
        100_000, _positive(int), "tasks kept; the least recently updated go first"
    )
    max_age: float = _setting(
        7 * 24 * 3600.0, _positive(float), "seconds a task is kept after its last update"
    )
    max_field_bytes: int = _setting(
        16_384, _positive(int), "cap on args, kwargs, result, exception and traceback"
    )
    max_timeline: int = _setting(
        100, _positive(int), "transitions kept per task (retry loops, progress)"
    )
    stream_maxlen: int = _setting(
        10_000, _positive(int), "approximate length of the change feed for the web tier"
    )
    stats_ttl: float = _setting(
        26 * 3600.0, _positive(float), "seconds per-minute counters are kept"
    )
    redact: tuple[str, ...] = _setting(
        ("password", "passwd", "secret", "token", "api_key", "apikey", "authorization"),
        _parse_names,
        "comma-separated kwarg names whose values are stored as '***'",
    )
    buffer_size: int = _setting(
        10_000, _positive(int), "records a process buffers while Redis is away"
    )
    flush_interval: float = _setting(
        0.1, _positive(float), "seconds between buffer flushes (latency bound)"
    )
    batch_size: int = _setting(500, _positive(int), "records written per Redis round trip")
    worker_grace: float = _setting(
        5.0, _non_negative(float), "seconds added to 2 x heartbeat freq before offline"
    )
    worker_purge_after: float = _setting(
        3600.0, _positive(float), "seconds an offline worker stays listed"
    )
    enable_events: bool = _setting(
        True, _parse_bool, "the receiver periodically asks workers to send events"
    )
    enable_events_interval: float = _setting(
        30.0, _positive(float), "seconds between enable_events broadcasts"
    )
    # web tier
    host: str = _setting("127.0.0.1", str, "address `serve` binds")
    port: int = _setting(5555, _positive(int), "port `serve` listens on")
    url_prefix: str = _setting("", str, "URL prefix when served behind a reverse proxy")
    message_queue: str | None = _setting(
        None,
        _optional(_REDIS_URL),
        "Socket.IO message queue (default: redis_url) so several serve processes share rooms",
    )
    push_interval: float = _setting(
        0.2, _positive(float), "seconds between coalesced pushes to a task room (summaries: 1 s)"
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``MONITOR_*`` variables, then ``overrides`` (None = unset)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            name = ENV_PREFIX + spec.name.upper()
            if name in environ:
                values[spec.name] = _parse(spec, environ[name], name)
        for key, value in overrides.items():
            if value is None:
                continue
            spec = _FIELDS.get(key)
            if spec is None:
                raise ConfigError(f"unknown setting {key!r}")
            name = f"{key} ({ENV_PREFIX}{key.upper()})"
            values[key] = _parse(spec, value, name) if isinstance(value, str) else value
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @staticmethod
    def describe() -> list[tuple[str, str, str]]:
        """(environment variable, default, help) for the README and ``--help``."""
        rows = []
        for spec in fields(Settings):
            default = spec.default
            if isinstance(default, tuple):
                default = ",".join(default)
            rows.append((ENV_PREFIX + spec.name.upper(), str(default), spec.metadata["help"]))
        return rows


_FIELDS = {spec.name: spec for spec in fields(Settings)}


def _parse(spec: dataclasses.Field[Any], text: str, name: str) -> Any:
    try:
        return spec.metadata["parse"](text)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{name}: {exc}") from None
