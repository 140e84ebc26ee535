"""Settings: defaults < ``MONITOR_*`` environment variables < explicit overrides.

This is the only module that reads the monitor's ``MONITOR_*`` variables
(the demo passes its environment on to the processes it starts, and the demo's
Celery app reads its own ``DEMO_*`` variables, as a user's app would). Everything is parsed once
into a frozen :class:`Settings`; a bad value raises :class:`ConfigError` naming
the variable, so a typo fails at start-up instead of at 3 a.m.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
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
        if not 0 < value < math.inf:  # also refuses NaN
            raise ValueError(f"must be a finite number > 0, got {text!r}")
        return value

    return parse


def _non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not 0 <= value < math.inf:  # also refuses NaN
            raise ValueError(f"must be a finite number >= 0, got {text!r}")
        return value

    return parse


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {text!r}")
        return value

    return parse


def _prefix(text: str) -> str:
    if not text or any(ch in text for ch in " {}\n\t"):
        raise ValueError(f"must be non-empty, without spaces or braces, got {text!r}")
    return text


#: The password of a URL's user info (``redis://:pw@host``, ``amqp://u:pw@host``;
#: the netloc ends at the first ``/``, the user info at its last ``@``), and a
#: ``password=`` query parameter (redis-py reads one), in any text.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s;?#]*:)[^/\s;?#]*(@)")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&\s;#]*", re.IGNORECASE)


def mask_url(text: str | None) -> str | None:
    """``text`` with every URL password in it replaced by ``***``: what a log line,
    an error message or a repr may show of a Redis or broker URL."""
    if not text or ("@" not in text and "password=" not in text.lower()):
        return text
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***\2", text))


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text.startswith(tuple(s + "://" for s in schemes)):
            raise ValueError(
                f"expected a URL starting with one of {schemes}, got {mask_url(text)!r}"
            )
        return text

    return parse


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda text: parse(text) if text else None


def _setting(default: Any, parse: Callable[[str], Any], help: str) -> Any:
    return field(default=default, metadata={"parse": parse, "help": help})


_REDIS_URL = _url(("redis", "rediss", "unix"))


# -- authentication settings (read by monitor/auth.py and monitor/audit.py) ----


class Secret(str):
    """A secret setting value: its repr never shows it (settings reach logs and tracebacks)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"


def _float_range(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if not low <= value <= high:  # also refuses NaN
            raise ValueError(f"must be between {low:g} and {high:g}, got {text!r}")
        return value

    return parse


def _auth_rule(name: str) -> Callable[[str], Any]:
    """A parser from monitor/auth.py, which owns the roles and the name and password rules."""

    def parse(text: str) -> Any:
        from . import auth

        return getattr(auth, name)(text)

    return parse


def _header_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", text):
        raise ValueError(f"expected an HTTP header name such as X-Forwarded-User, got {text!r}")
    return text


def _hosts(text: str) -> tuple[str, ...]:
    hosts = _parse_names(text)
    for host in hosts:
        if not re.fullmatch(r"[a-z0-9_.*:\[\]-]{1,255}", host):
            raise ValueError(f"expected names such as example.com or *.example.com, got {host!r}")
    return hosts


def _secret_key(text: str) -> Secret:
    if len(text) < 16:
        raise ValueError("must be at least 16 characters (the value is not shown)")
    return Secret(text)


# -- alert settings (read by monitor/alerts.py) ------------------------------


def _alert_rules_file(text: str) -> str:
    """The rules file's path, once every rule in it is valid (monitor/alerts.py owns
    the rules): a typo fails at start-up naming the rule and the field."""
    from . import alerts

    alerts.load_rules_file(text)
    return text


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
    clock_skew: float = _setting(
        300.0,
        _non_negative(float),
        "seconds a reported time may lie ahead of arrival; later (or older than max_age) "
        "is stored as the arrival time, the reported one kept beside it",
    )
    max_field_bytes: int = _setting(
        16_384,
        _positive(int),
        "cap on args, kwargs, result, exception, traceback and each extra event field",
    )
    max_extra_fields: int = _setting(
        32,
        _int_range(0, 100),  # the store takes 256 fields a record; each extra may add a marker
        "extra (non-Celery) fields kept per task event; the rest are counted in fields_truncated",
    )
    max_decompressed_bytes: int = _setting(
        4 * 1024 * 1024,
        _positive(int),
        "cap on an event message's size after decompression; a larger one is skipped",
    )
    max_timeline: int = _setting(
        100, _positive(int), "transitions kept per task (retry loops, progress)"
    )
    stream_maxlen: int = _setting(
        10_000, _positive(int), "approximate length of the change feed for the web tier"
    )
    stats_ttl: float = _setting(
        2 * 3600.0,
        _positive(float),
        "seconds per-name and per-worker per-minute counters are kept (the history's 15 min "
        "and 1 h windows of one task name or worker; the overview's slowest and failing)",
    )
    redact: tuple[str, ...] = _setting(
        ("password", "passwd", "secret", "token", "api_key", "apikey", "authorization"),
        _parse_names,
        "comma-separated names: a value is stored as '***' when the key it is stored under "
        "(at any depth) or its positional parameter's name contains one, case-insensitively",
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
    serve_events: bool = _setting(
        True, _parse_bool, "`serve` (and the gunicorn app) embed the event receiver"
    )
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
    live_max_rooms: int = _setting(
        100, _positive(int), "Socket.IO rooms one connection may be in (subscribes beyond: refused)"
    )
    live_max_rooms_total: int = _setting(
        10_000,
        _positive(int),
        "distinct Socket.IO rooms a serve process keeps (and the pushing process serves in all)",
    )
    live_subscribe_rate: float = _setting(
        20.0,
        _positive(float),
        "subscribes per second per Socket.IO connection (bursts of as many); "
        "a connection refused 50 times is closed",
    )
    # authentication, authorisation and audit (monitor/auth.py, monitor/audit.py)
    basic_auth: tuple[tuple[str, Secret], ...] | None = _setting(
        None,
        _optional(_auth_rule("parse_basic_auth")),
        "Flower's --basic-auth: 'user:password,user2:password2'; these users are operators",
    )
    auth_header: str | None = _setting(
        None,
        _optional(_header_name),
        "trusted header naming the user set by an authenticating proxy (e.g. X-Forwarded-User); "
        "off by default: enable only when every request comes through that proxy",
    )
    auth_header_roles: tuple[str, ...] = _setting(
        ("*:viewer",),
        _auth_rule("parse_role_map"),
        "roles of auth_header users: 'alice:admin,*@ops.example.com:operator,*:viewer'; "
        "an exact name wins, else the first matching pattern; no match: anonymous",
    )
    read_only: bool = _setting(
        False, _parse_bool, "refuse every action whatever the users (read-only dashboard)"
    )
    audit_max_entries: int = _setting(
        100_000, _int_range(1, 100_000_000), "audit log entries kept; the oldest go first"
    )
    audit_max_age: float = _setting(
        7 * 24 * 3600.0, _positive(float), "seconds an audit log entry is kept"
    )
    secret_key: Secret | None = _setting(
        None,
        _optional(_secret_key),
        "key signing session cookies (default: generated once and kept in Redis, "
        "so every serve process agrees)",
    )
    session_lifetime: float = _setting(
        12 * 3600.0, _positive(float), "seconds a browser session stays signed in"
    )
    allowed_hosts: tuple[str, ...] = _setting(
        (),
        _hosts,
        "Host header values served, comma-separated ('*.example.com' for subdomains, '*' any); "
        "default: the bound address and localhost names",
    )
    hide_args_from_viewers: bool = _setting(
        False,
        _parse_bool,
        "viewers see no args, kwargs, results, progress meta or traceback, "
        "and only the type of an exception",
    )
    # -- metrics and history (issue 10)
    stats_minutes_ttl: float = _setting(
        7 * 24 * 3600.0,
        _positive(float),
        "seconds the global per-minute counters and histograms are kept",
    )
    stats_hours_ttl: float = _setting(
        90 * 24 * 3600.0, _positive(float), "seconds the global hourly counters are kept"
    )
    stats_scoped_hours_ttl: float = _setting(
        8 * 24 * 3600.0,
        _positive(float),
        "seconds per-name and per-worker hourly counters are kept (the history's 24 h and "
        "7 d windows of one task name or worker)",
    )
    metrics_max_names: int = _setting(
        1000, _int_range(1, 100_000), "task names /metrics labels; past it: __other__"
    )
    metrics_max_hostnames: int = _setting(
        500, _int_range(1, 100_000), "hostnames /metrics labels; past it: __other__"
    )
    metrics_max_queues: int = _setting(
        500, _int_range(1, 100_000), "queue names /metrics labels; past it: __other__"
    )
    metrics_max_exceptions: int = _setting(
        200, _int_range(1, 100_000), "exception classes /metrics labels; past it: __other__"
    )
    metrics_max_series: int = _setting(
        50_000,
        _int_range(100, 10_000_000),
        "fields of the /metrics totals hash (label combinations x buckets); past it, new "
        "combinations count with every label __other__",
    )
    # -- queues (issue 10)
    queues_interval: float = _setting(
        10.0,
        _float_range(0.5, 86400.0),  # one sample reads up to queues_max queues
        "seconds between two samples of every known queue's depth, consumers and oldest "
        "message (one elected serve process samples)",
    )
    queues_max: int = _setting(
        1000, _int_range(1, 100_000), "queues sampled at most (the app's and workers' first)"
    )
    queues_history_max: int = _setting(
        200,
        _int_range(0, 10_000),
        "queues whose per-minute history (7 days) is kept: the deepest of each sample",
    )
    broker_api: str | None = _setting(
        None,
        _optional(_url(("http", "https"))),
        "RabbitMQ management API URL, e.g. http://guest:guest@localhost:15672/api/ "
        "(like Flower's --broker-api): adds messages ready/unacknowledged and rates per queue",
    )
    # -- alerts (issue 10) ---------------------------------------------------------
    alert_rules: str | None = _setting(
        None,
        _optional(_alert_rules_file),
        "alert rules file (.toml or .json), validated at start-up; operators add more in the UI",
    )
    alert_interval: float = _setting(
        5.0, _float_range(0.1, 3600.0), "seconds between two evaluations of the alert rules"
    )
    alert_timeout: float = _setting(
        5.0, _float_range(0.1, 60.0), "seconds one webhook delivery may take, all included"
    )
    alert_max_attempts: int = _setting(
        5, _int_range(1, 50), "delivery attempts of one alert before it is logged as failed"
    )
    alert_backoff: float = _setting(
        10.0,
        _float_range(0.01, 3600.0),
        "seconds before the 2nd delivery attempt; doubled for each next one (capped at 1 h)",
    )
    alert_budget: float = _setting(
        10.0,
        _float_range(0.1, 300.0),
        "seconds of webhook deliveries per evaluation; the rest wait for the next one",
    )
    alert_dedup: float = _setting(
        600.0,
        _float_range(0.0, 30 * 24 * 3600.0),
        "default dedup window (s) of a rule: the same rule and subject alert once in it",
    )
    alert_log_max: int = _setting(
        1000, _int_range(1, 1_000_000), "sent alerts kept in the log; the oldest go first"
    )
    alert_dashboard_url: str | None = _setting(
        None,
        _optional(_url(("http", "https"))),
        "the dashboard's public URL: alerts then link to the task, worker or queue",
    )
    # -- lost and stuck tasks, result-backend reconciliation (issue 10)
    reconcile_after: float = _setting(
        0.0,
        _non_negative(float),
        "seconds after its last update a non-final task is checked against the result "
        "backend (AsyncResult) and corrected; 0: off",
    )
    reconcile_batch: int = _setting(
        100, _int_range(1, 1000), "tasks checked against the result backend per run"
    )
    reconcile_interval: float = _setting(
        30.0, _positive(float), "seconds between two reconciliation runs"
    )
    stuck_p99_factor: float = _setting(
        10.0,
        _positive(float),
        "a STARTED task running longer than this many times its name's p99 runtime "
        "(last 24 h, at least 20 runs) is stuck",
    )

    # -- celery beat (issue 10)
    beat_grace: float | None = _setting(
        None,
        _optional(_positive(float)),
        "seconds after a periodic task was due before a run not seen marks it missed "
        "(default: half its interval, at least 30 s, at most 1 h)",
    )

    def __repr__(self) -> str:
        # Settings reach logs and tracebacks: URL passwords masked (the
        # dataclass keeps this one rather than generating its own).
        parts = []
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name in _URL_SETTINGS:
                value = mask_url(value)
            parts.append(f"{spec.name}={value!r}")
        return f"Settings({', '.join(parts)})"

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
#: Settings holding a URL that may carry a password (Settings' repr masks it).
_URL_SETTINGS = frozenset({"redis_url", "broker_url", "message_queue", "broker_api"})


def _parse(spec: dataclasses.Field[Any], text: str, name: str) -> Any:
    try:
        return spec.metadata["parse"](text)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{name}: {exc}") from None
