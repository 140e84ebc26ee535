"""Alerts: the rules, their evaluation in one elected process, and webhook delivery.

**Rules** come from a file (``MONITOR_ALERT_RULES``: TOML or JSON, validated at
start-up, every error naming the rule and the field) and from operators in the
UI (stored in Redis, ``Keys.alert_rules``; see ``monitor/web/alerts_api.py``).
Five kinds:

* ``task_failed``: a task whose name matches ``pattern`` (a glob) ends in
  FAILURE, i.e. after its retries are exhausted (a retry is RETRY, not FAILURE).
  Read from the change feed ``{p}:changes`` from a cursor kept in Redis, so an
  evaluator that takes over continues where the last one stopped;
* ``failure_rate``: FAILURE / (SUCCESS + FAILURE) above ``threshold_percent``
  over ``window_seconds`` with at least ``min_count`` finished tasks, from the
  per-minute stats hashes (all matching names together, or ``per_name``);
* ``worker_offline``: a worker matching ``pattern`` offline for ``seconds``;
* ``queue``: a queue's depth above ``max_depth`` or its oldest message older
  than ``max_age`` seconds (``monitor.queues.latest``);
* ``beat_missed``: a periodic task that did not run when due
  (``monitor.beat.periodic_tasks``).

The first kind is an event: one alert per rule and subject (the task name) per
dedup window. The others are conditions: an alert when a subject starts firing,
a reminder when it still fires a dedup window later, and a "resolved" message
when it stops (``send_resolved``).

**Evaluation** is the elected job :func:`jobs` returns (``monitor.jobs``): N
``serve`` processes send one alert, not N. **Delivery** posts JSON (generic, or
Slack-compatible ``{"text", "blocks"}``) to the rule's webhook: http(s) only,
one deadline for the whole exchange (connect, send, headers, body), at most
:data:`MAX_RESPONSE_BYTES` of the answer read, anything but 2xx a failure
retried with exponential backoff up to ``MONITOR_ALERT_MAX_ATTEMPTS``. A pending
delivery lives in Redis (``Keys.alert_pending`` / ``alert_deliveries``), so a
restart or a failover does not lose it; the outcome of each ends in the sent
log, a stream trimmed to ``MONITOR_ALERT_LOG_MAX`` (``Keys.alert_log``). One
evaluation spends at most ``MONITOR_ALERT_BUDGET`` seconds delivering: a dead
receiver delays alerts, it never stops their evaluation.

This module also owns the alert reads of the web tier (:func:`sent_log`,
:func:`pending`, :func:`active`, :func:`status`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import json
import logging
import math
import os
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import redis

from . import __version__, beat, queues
from .jobs import Job, JobContext
from .values import finite_float

logger = logging.getLogger(__name__)

KINDS = ("task_failed", "failure_rate", "worker_offline", "queue", "beat_missed")
FORMATS = ("json", "slack")
#: Rules a file may hold, and rules operators may add in the UI.
MAX_FILE_RULES = 200
MAX_UI_RULES = 100
#: A rules file larger than this is refused (it is read whole at start-up).
MAX_FILE_BYTES = 1 << 20
#: A rule as JSON (what the UI stores) is at most this long.
MAX_RULE_BYTES = 16 * 1024
MAX_TEXT = 200
MAX_DESCRIPTION = 1000
MAX_URL = 2048
#: Firing subjects one condition rule tracks (1,000 workers offline: 100 alerts).
MAX_SUBJECTS = 100
#: Change feed entries read per evaluation (batches of FEED_BATCH).
FEED_BATCH = 2000
FEED_BATCHES = 25
#: Task failures one evaluation turns into alerts (the rest are deduplicated
#: away or wait: the cursor stops at the last one handled).
MAX_EVENT_ALERTS = 200
#: Deliveries waiting at once; an alert past that is logged as dropped.
MAX_PENDING = 1000
#: Deliveries one evaluation takes (within its time budget).
DELIVER_BATCH = 50
#: Bytes of a webhook's answer read (the rest is never read).
MAX_RESPONSE_BYTES = 64 * 1024
#: Longest wait between two attempts.
MAX_BACKOFF = 3600.0
#: Errors kept per delivery (its last attempts).
MAX_ERRORS = 5
#: An event rule's guard per task id (a task reported twice alerts once).
TASK_GUARD_SECONDS = 24 * 3600
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class RuleError(ValueError):
    """A rule that cannot be used; ``rule`` and ``field`` say where (field may be None)."""

    def __init__(self, rule: str, field_name: str | None, message: str):
        self.rule = rule
        self.field = field_name
        self.reason = message
        where = (rule if rule.startswith("file ") else f"rule {rule}") + (
            f": field {field_name!r}" if field_name else ""
        )
        super().__init__(f"{where}: {message}")


# -- rules --------------------------------------------------------------------------
def _brief(value: Any) -> str:
    from .model import brief

    return brief(value)


def _text(
    limit: int, pattern: re.Pattern[str] | None = None, empty: bool = False
) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if type(value) is not str:
            raise ValueError(f"must be a string, got {type(value).__name__}")
        if not empty and not value.strip():
            raise ValueError("must not be empty")
        if len(value) > limit:
            raise ValueError(f"must be at most {limit} characters, got {len(value)}")
        if pattern is not None and not pattern.fullmatch(value):
            raise ValueError(
                f"must be letters, digits and _ . : - (at most 64, starting with a letter or"
                f" digit), got {_brief(value)}"
            )
        if pattern is None and limit <= MAX_TEXT and _CONTROL.search(value):
            raise ValueError("must not contain control characters")
        return value

    return check


def _number(low: float, high: float, integer: bool = False) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if type(value) is bool or not isinstance(value, int | float):
            raise ValueError(f"must be a number, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r}")
        if not low <= value <= high:  # an int of 10**1000 compares fine
            raise ValueError(f"must be from {_plain(low)} to {_plain(high)}, got {_brief(value)}")
        if integer:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"must be a whole number, got {value!r}")
            return int(value)
        return float(value)

    return check


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise ValueError(f"must be true or false, got {_brief(value)}")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if type(value) is not str or value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {_brief(value)}")
        return value

    return check


def check_webhook(value: Any) -> str:
    """An http(s) URL with a host (ValueError saying what is wrong otherwise)."""
    if type(value) is not str:
        raise ValueError(f"must be a string, got {type(value).__name__}")
    if len(value) > MAX_URL:
        raise ValueError(f"must be at most {MAX_URL} characters, got {len(value)}")
    if _CONTROL.search(value) or " " in value:
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"must be an http:// or https:// URL, got scheme {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("must name a host")
    if port == 0:
        raise ValueError("must not use port 0")
    return value


_DAY = 24 * 3600.0
#: field -> (check, default); ``...`` marks a required field.
_COMMON: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "name": (_text(64, _NAME), ...),
    "kind": (_choice(KINDS), ...),
    "webhook": (check_webhook, ...),
    "format": (_choice(FORMATS), "json"),
    "pattern": (_text(MAX_TEXT), "*"),
    "dedup_seconds": (_number(0, 30 * _DAY), None),  # None: MONITOR_ALERT_DEDUP
    "enabled": (_bool, True),
    "description": (_text(MAX_DESCRIPTION, empty=True), ""),
}
_BY_KIND: dict[str, dict[str, tuple[Callable[[Any], Any], Any]]] = {
    "task_failed": {},
    "failure_rate": {
        "threshold_percent": (_number(0, 100), ...),
        "window_seconds": (_number(60, _DAY), 300.0),
        "min_count": (_number(1, 1_000_000_000, integer=True), 10),
        "per_name": (_bool, False),
        "send_resolved": (_bool, True),
    },
    "worker_offline": {
        "seconds": (_number(0, 30 * _DAY), 60.0),
        "send_resolved": (_bool, True),
    },
    "queue": {
        "max_depth": (_number(0, 1e12, integer=True), None),
        "max_age": (_number(0, 30 * _DAY), None),
        "send_resolved": (_bool, True),
    },
    "beat_missed": {"send_resolved": (_bool, True)},
}
#: Every field any rule may have, in the order the API shows them.
RULE_FIELDS = tuple(dict.fromkeys([*_COMMON, *(f for k in _BY_KIND.values() for f in k)]))


@dataclass(frozen=True)
class Rule:
    """One validated rule (build it with :func:`parse_rule`)."""

    name: str
    kind: str
    webhook: str
    format: str = "json"
    pattern: str = "*"
    dedup_seconds: float | None = None
    enabled: bool = True
    description: str = ""
    threshold_percent: float | None = None
    window_seconds: float | None = None
    min_count: int | None = None
    per_name: bool | None = None
    seconds: float | None = None
    max_depth: int | None = None
    max_age: float | None = None
    send_resolved: bool | None = None
    #: "file" or "ui"
    source: str = "file"

    def dedup(self, settings: Any) -> float:
        return settings.alert_dedup if self.dedup_seconds is None else self.dedup_seconds

    def matches(self, subject: str) -> bool:
        return self.pattern == "*" or fnmatch.fnmatchcase(subject, self.pattern)

    def as_dict(self, reveal: bool = True) -> dict[str, Any]:
        """The rule's fields that apply to its kind (the webhook masked unless ``reveal``)."""
        allowed = {**_COMMON, **_BY_KIND[self.kind]}
        out = {name: getattr(self, name) for name in RULE_FIELDS if name in allowed}
        if not reveal:
            out["webhook"] = mask_webhook(self.webhook)
        return out


def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


def kind_fields() -> dict[str, dict[str, Any]]:
    """Per kind: its own fields, which are required, and their defaults (the page's form)."""
    out = {}
    for kind, extra in _BY_KIND.items():
        out[kind] = {
            "fields": list(extra),
            "required": [k for k, (_, d) in extra.items() if d is ...],
            "defaults": {k: d for k, (_, d) in extra.items() if d is not ...},
        }
    return out


#: JSON schema of each rule field (the OpenAPI document).
_SCHEMAS: dict[str, dict[str, Any]] = {
    "name": {"type": "string", "pattern": _NAME.pattern, "maxLength": 64},
    "kind": {"type": "string", "enum": list(KINDS)},
    "webhook": {"type": "string", "maxLength": MAX_URL, "description": "http:// or https:// URL"},
    "format": {"type": "string", "enum": list(FORMATS), "default": "json"},
    "pattern": {"type": "string", "maxLength": MAX_TEXT, "default": "*"},
    "dedup_seconds": {"type": ["number", "null"], "minimum": 0, "maximum": 30 * 24 * 3600},
    "enabled": {"type": "boolean", "default": True},
    "description": {"type": "string", "maxLength": MAX_DESCRIPTION},
    "threshold_percent": {"type": "number", "minimum": 0, "maximum": 100},
    "window_seconds": {"type": "number", "minimum": 60, "maximum": 24 * 3600},
    "min_count": {"type": "integer", "minimum": 1},
    "per_name": {"type": "boolean"},
    "seconds": {"type": "number", "minimum": 0},
    "max_depth": {"type": ["integer", "null"], "minimum": 0},
    "max_age": {"type": ["number", "null"], "minimum": 0},
    "send_resolved": {"type": "boolean", "default": True},
}


def field_schema(name: str) -> dict[str, Any]:
    return dict(_SCHEMAS.get(name, {}))


def parse_rule(data: Any, source: str = "file", label: str | None = None) -> Rule:
    """A :class:`Rule` from a mapping, or :class:`RuleError` naming the rule and field.

    ``label`` names the rule when it has no usable name (``#3`` in a file).
    """
    label = label or "(unnamed)"
    if not isinstance(data, Mapping):
        raise RuleError(label, None, f"must be a table/object, got {type(data).__name__}")
    raw_name = data.get("name")
    if type(raw_name) is str and _NAME.fullmatch(raw_name):
        label = repr(raw_name)
    kind = data.get("kind")
    try:
        kind = _COMMON["kind"][0](kind)
    except ValueError as exc:
        raise RuleError(label, "kind", str(exc)) from None
    allowed = {**_COMMON, **_BY_KIND[kind]}
    if len(data) > len(allowed) + 5:
        raise RuleError(label, None, f"has {len(data)} fields; a {kind} rule has {len(allowed)}")
    values: dict[str, Any] = {}
    for key in data:
        if key not in allowed:
            known = ", ".join(allowed)
            if key in RULE_FIELDS:
                raise RuleError(label, _key(key), f"does not apply to a {kind} rule ({known})")
            raise RuleError(label, _key(key), f"is not a rule field ({known})")
    for key, (check, default) in allowed.items():
        if key not in data or data[key] is None:
            if default is ...:
                raise RuleError(label, key, "is required")
            values[key] = default
            continue
        try:
            values[key] = check(data[key])
        except ValueError as exc:
            raise RuleError(label, key, str(exc)) from None
    if kind == "queue" and values["max_depth"] is None and values["max_age"] is None:
        raise RuleError(label, "max_depth", "a queue rule needs max_depth or max_age (or both)")
    return Rule(source=source, **values)


def _key(key: Any) -> str:
    return key[:64] if isinstance(key, str) else _brief(key)


def parse_rules_document(document: Any, where: str) -> list[Rule]:
    """The rules of a parsed file: ``{"rules": [...]}`` (TOML ``[[rules]]``) or a list."""
    if isinstance(document, Mapping):
        extra = [key for key in document if key != "rules"]
        if extra:
            raise RuleError(
                f"file {where}", None, f"unknown top-level key {_key(extra[0])!r} (only 'rules')"
            )
        document = document.get("rules", [])
    if not isinstance(document, list):
        raise RuleError(f"file {where}", "rules", "must be a list of rules")
    if len(document) > MAX_FILE_RULES:
        raise RuleError(
            f"file {where}", "rules", f"holds {len(document)} rules; at most {MAX_FILE_RULES}"
        )
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, item in enumerate(document, 1):
        rule = parse_rule(item, "file", label=f"#{index}")
        if rule.name in seen:
            raise RuleError(repr(rule.name), "name", "is used by two rules")
        seen.add(rule.name)
        rules.append(rule)
    return rules


def load_rules_file(path: str) -> list[Rule]:
    """Read and validate a rules file (.toml or .json). RuleError (a ValueError)
    names the file, the rule and the field of the first problem."""
    import tomllib

    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise RuleError(f"file {path}", None, f"is {size} bytes; at most {MAX_FILE_BYTES}")
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise RuleError(f"file {path}", None, f"cannot be read: {exc.strerror or exc}") from None
    try:
        if path.endswith(".toml"):
            document = tomllib.loads(raw.decode("utf-8"))
        elif path.endswith(".json"):
            document = json.loads(raw)  # NaN, Infinity: refused by the field's check
        else:
            raise RuleError(f"file {path}", None, "must end in .toml or .json")
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, RuleError):
            raise
        raise RuleError(f"file {path}", None, f"is not valid: {exc}") from None
    try:
        return parse_rules_document(document, path)
    except RuleError as exc:
        if exc.rule.startswith("file "):
            raise
        raise RuleError(f"{exc.rule} of {path}", exc.field, exc.reason) from None


_file_cache: dict[str, tuple[tuple[int, int], list[Rule]]] = {}
_file_lock = threading.Lock()


def file_rules(settings: Any) -> list[Rule]:
    """The rules of ``MONITOR_ALERT_RULES`` (re-read when the file changes; a file
    that became invalid keeps its last valid rules, and says why in the log)."""
    path = settings.alert_rules
    if not path:
        return []
    try:
        stat = os.stat(path)
        stamp = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        stamp = (0, 0)
    with _file_lock:
        cached = _file_cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            rules = load_rules_file(path)
        except RuleError as exc:
            if cached is None:
                raise
            logger.error("alerts: %s; keeping the rules read before", exc)
            _file_cache[path] = (stamp, cached[1])
            return cached[1]
        _file_cache[path] = (stamp, rules)
        return rules


# -- rules made in the UI (Redis) ------------------------------------------------------
#: KEYS[1] = rules hash; ARGV[1] = name, ARGV[2] = JSON, ARGV[3] = "create"|"update",
#: ARGV[4] = max rules. returns 1 done, 0 exists (create) / missing (update), -1 full.
_PUT_RULE = """
local exists = redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1
if ARGV[3] == 'create' then
  if exists then return 0 end
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return -1 end
elseif not exists then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


class RuleConflict(Exception):
    """A UI rule change that cannot be made; ``status`` is the HTTP answer."""

    def __init__(self, message: str, status: int, code: str):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


def ui_rules(store: Any) -> tuple[list[Rule], dict[str, str]]:
    """The operators' rules, and {name: problem} of stored ones that no longer parse."""
    raw = store.redis.hgetall(store.keys.alert_rules)
    rules, problems = [], {}
    for name in sorted(raw)[:MAX_UI_RULES]:
        try:
            rules.append(parse_rule(json.loads(raw[name]), "ui"))
        except (ValueError, RecursionError) as exc:
            problems[name] = str(exc)[:500]
    return rules, problems


def put_rule(store: Any, settings: Any, data: Any, create: bool, name: str | None = None) -> Rule:
    """Create (``create``) or replace an operator's rule; RuleError when invalid,
    RuleConflict when the name is taken, unknown, a file rule's, or the UI is full."""
    if create:
        rule = parse_rule(data, "ui")
    else:
        if not isinstance(data, Mapping):
            raise RuleError(repr(name), None, "must be an object")
        data = {**data, "name": name} if "name" not in data else data
        rule = parse_rule(data, "ui")
        if rule.name != name:
            raise RuleError(repr(name), "name", "cannot be changed: delete and create instead")
    if any(r.name == rule.name for r in file_rules(settings)):
        raise RuleConflict(
            f"rule {rule.name!r} comes from the rules file, which the UI does not edit",
            409,
            "file_rule",
        )
    text = json.dumps({k: v for k, v in rule.as_dict().items()}, separators=(",", ":"))
    script = store.redis.register_script(_PUT_RULE)
    done = script(
        keys=[store.keys.alert_rules],
        args=[rule.name, text, "create" if create else "update", MAX_UI_RULES],
    )
    if done == -1:
        raise RuleConflict(f"at most {MAX_UI_RULES} rules can be made in the UI", 409, "full")
    if done == 0 and create:
        raise RuleConflict(f"a rule named {rule.name!r} exists already", 409, "exists")
    if done == 0:
        raise RuleConflict(f"no rule named {rule.name!r} was made in the UI", 404, "not_found")
    return rule


def delete_rule(store: Any, settings: Any, name: str) -> None:
    """Remove an operator's rule and its firing state (RuleConflict when not there)."""
    if any(r.name == name for r in file_rules(settings)):
        raise RuleConflict(
            f"rule {name!r} comes from the rules file, which the UI does not edit", 409, "file_rule"
        )
    pipe = store.redis.pipeline(transaction=True)
    pipe.hdel(store.keys.alert_rules, name)
    if _NAME.fullmatch(name):
        pipe.delete(store.keys.alert_active(name))
    if not pipe.execute()[0]:
        raise RuleConflict(f"no rule named {name!r} was made in the UI", 404, "not_found")


def all_rules(store: Any, settings: Any) -> tuple[list[Rule], dict[str, str]]:
    """File rules, then the UI's (a UI rule cannot shadow a file rule's name)."""
    from_file = file_rules(settings)
    from_ui, problems = ui_rules(store)
    names = {r.name for r in from_file}
    for rule in from_ui:
        if rule.name in names:
            problems[rule.name] = "a rule of the rules file has this name; the UI's is ignored"
    return from_file + [r for r in from_ui if r.name not in names], problems


# -- what is sent ---------------------------------------------------------------------
def mask_webhook(url: str) -> str:
    """scheme://host[:port]/…: a webhook URL often is its own secret (Slack's is)."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return "…"
    rest = "/…" if (parts.path not in ("", "/") or parts.query) else "/"
    return f"{parts.scheme}://{host}{rest}"


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: Any, limit: int) -> str:
    text = text if isinstance(text, str) else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def payload(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The body posted for ``alert`` in its rule's format."""
    if alert.get("format") == "slack":
        return slack_payload(alert)
    return {
        "source": "celery-monitor",
        "id": alert["id"],
        "rule": alert["rule"],
        "kind": alert["kind"],
        "status": alert["status"],
        "subject": alert["subject"],
        "summary": alert["summary"],
        "details": alert.get("details") or {},
        "at": alert["at"],
        "url": alert.get("url"),
    }


def slack_payload(alert: Mapping[str, Any]) -> dict[str, Any]:
    """Slack's incoming-webhook shape (also read by Mattermost, Rocket.Chat ...):
    ``text`` for notifications, ``blocks`` for the message; user data escaped."""
    status = alert["status"]
    marker = {"firing": ":rotating_light: *FIRING*", "resolved": ":white_check_mark: *RESOLVED*"}
    headline = f"{marker.get(status, status.upper())} {_slack_escape(_cut(alert['summary'], 2500))}"
    if alert.get("url"):
        headline += f"\n<{_slack_escape(alert['url'])}|open in celery monitor>"
    facts = [("Rule", alert["rule"]), ("Kind", alert["kind"]), ("Subject", alert["subject"])]
    for key, value in list((alert.get("details") or {}).items())[:7]:
        if value is not None and value != "":
            facts.append((key.replace("_", " ").capitalize(), value))
    at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(alert["at"]))
    return {
        "text": f"[{status}] {_cut(alert['summary'], 2900)}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": headline}},
            {
                "type": "section",
                "fields": [
                    {
                        "type": "mrkdwn",
                        "text": f"*{_slack_escape(k)}*\n{_slack_escape(_cut(v, 1900))}",
                    }
                    for k, v in facts[:10]
                ],
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"celery monitor · {at}"}],
            },
        ],
    }


@dataclass
class SendResult:
    ok: bool
    status: int | None = None
    error: str | None = None


def send_webhook(url: str, body: Any, timeout: float) -> SendResult:
    """POST ``body`` as JSON to ``url``: one deadline of ``timeout`` seconds for the
    whole exchange (a receiver that trickles its answer a byte at a time is cut
    at the deadline, not at each read's), at most MAX_RESPONSE_BYTES read, no
    redirect followed. 2xx is delivered; anything else, an error."""
    try:
        check_webhook(url)
    except ValueError as exc:
        return SendResult(False, None, f"webhook {exc}")
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    expired = threading.Event()

    def cut() -> None:  # the deadline: wake whatever read or write is blocked
        expired.set()
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(timeout, cut)
    timer.daemon = True
    timer.start()
    try:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"celery-monitor/{__version__}",
            "Content-Length": str(len(data)),
        }
        if parts.username:
            import base64

            user = f"{parts.username}:{parts.password or ''}"
            headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
        conn.request("POST", quote(path, safe="/?&=%:@!$'()*+,;~-._"), body=data, headers=headers)
        response = conn.getresponse()
        head = response.read(MAX_RESPONSE_BYTES) if response.status >= 300 else b""
        if expired.is_set():
            return SendResult(False, response.status, f"timed out after {timeout:g} s")
        if 200 <= response.status < 300:
            return SendResult(True, response.status)
        text = head[:200].decode("utf-8", "replace").strip()
        if 300 <= response.status < 400:
            text = "redirects are not followed" + (f"; {text}" if text else "")
        return SendResult(
            False, response.status, f"HTTP {response.status}" + (f": {text}" if text else "")
        )
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if expired.is_set() or isinstance(exc, TimeoutError | socket.timeout):
            return SendResult(False, None, f"timed out after {timeout:g} s")
        return SendResult(False, None, f"{type(exc).__name__}: {_cut(str(exc), 200)}")
    finally:
        timer.cancel()
        conn.close()


def send_test(rule: Rule, settings: Any, by: str = "") -> SendResult:
    """One attempt of a test message to ``rule``'s webhook (not queued, not logged)."""
    alert = {
        "id": "test-" + uuid.uuid4().hex[:10],
        "rule": rule.name,
        "kind": rule.kind,
        "status": "test",
        "subject": "test",
        "summary": f"Test message for alert rule {rule.name}" + (f", sent by {by}" if by else ""),
        "details": {"pattern": rule.pattern},
        "at": time.time(),
        "url": None,
        "format": rule.format,
    }
    return send_webhook(rule.webhook, payload(alert), settings.alert_timeout)


# -- evaluation ---------------------------------------------------------------------------
#: KEYS[1] = pending zset; ARGV[1] = now, ARGV[2] = count, ARGV[3] = held until.
#: returns the ids due now, each held (scored ARGV[3]) so no other evaluator takes it.
_TAKE_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], 'XX', ARGV[3], id) end
return ids
"""


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class Engine:
    """One evaluator's state (kept between runs in the job's context)."""

    store: Any
    settings: Any
    celery_app: Any = None
    clock: Callable[[], float] = time.time
    #: minute -> counters of the per-minute stats (past minutes do not change)
    _minutes: dict[int, dict[str, str]] = field(default_factory=dict)
    _take: Any = None
    #: per-rule problems of the last run (a missing module, stored rule errors)
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def keys(self) -> Any:
        return self.store.keys

    @property
    def redis(self) -> Any:
        return self.store.redis

    # -- one run --------------------------------------------------------------------
    def run(self) -> dict[str, int]:
        """Evaluate every rule, queue what fires, deliver what is due (bounded)."""
        now = self.clock()
        rules, problems = all_rules(self.store, self.settings)
        self.problems = dict(problems)
        enabled = [r for r in rules if r.enabled]
        queued = 0
        event_rules = [r for r in enabled if r.kind == "task_failed"]
        queued += self._task_failures(event_rules, now)
        shared: dict[str, Any] = {}
        for rule in enabled:
            if rule.kind == "task_failed":
                continue
            found = _CONDITIONS[rule.kind](self, rule, now, shared)
            queued += self._transitions(rule, found, now)
        for rule in rules:
            if not rule.enabled and rule.kind != "task_failed":
                self.redis.delete(self.keys.alert_active(rule.name))
        delivered = self.deliver_due()
        self.redis.hset(
            self.keys.alert_status,
            mapping={
                "last_run": repr(now),
                "rules": len(rules),
                "problems": json.dumps(self.problems),
            },
        )
        return {"queued": queued, **delivered}

    # -- task failures from the change feed --------------------------------------
    def _task_failures(self, rules: list[Rule], now: float) -> int:
        r, keys = self.redis, self.keys
        cursor = r.get(keys.alert_cursor)
        if cursor is None:
            # The evaluator's first run: what the feed holds already is history.
            last = r.xrevrange(keys.changes, count=1)
            r.set(keys.alert_cursor, last[0][0] if last else "0-0")
            return 0
        if not rules:
            # Nothing to look for: follow the feed's end (a rule added later
            # does not alert on failures from before it existed).
            last = r.xrevrange(keys.changes, count=1)
            if last:
                r.set(keys.alert_cursor, last[0][0])
            return 0
        failures: list[dict[str, str]] = []
        for _ in range(FEED_BATCHES):
            answer = r.xread({keys.changes: cursor}, count=FEED_BATCH)
            entries = answer[0][1] if answer else []
            for entry_id, entry in entries:
                if entry.get("kind") == "task" and entry.get("state") == "FAILURE":
                    failures.append(entry)
                cursor = entry_id
            if len(entries) < FEED_BATCH or len(failures) >= 10 * MAX_EVENT_ALERTS:
                break
        # A failure recorded before the task's name reached the store (the pool
        # process's report ahead of the parent's RECEIVED) is in the feed without
        # one: the task hash may know it by now.
        unnamed = [entry for entry in failures if not entry.get("name")]
        if unnamed:
            pipe = r.pipeline(transaction=False)
            for entry in unnamed:
                pipe.hget(keys.task(entry.get("id") or ""), "name")
            for entry, name in zip(unnamed, pipe.execute(), strict=True):
                if name:
                    entry["name"] = name
        candidates = []
        for entry in failures:
            name = entry.get("name") or ""
            for rule in rules:
                if rule.matches(name):
                    candidates.append((rule, entry))
        queued = 0
        # Two guards per candidate: this task id alerts once per rule (a task
        # reported by both hooks and events is in the feed twice), and one task
        # name alerts once per dedup window.
        for start in range(0, len(candidates), 100):
            chunk = candidates[start : start + 100]
            pipe = r.pipeline(transaction=False)
            for rule, entry in chunk:
                window = rule.dedup(self.settings)
                task_id = entry.get("id") or ""
                pipe.set(
                    keys.alert_dedup(rule.name, "task-" + _digest(task_id)),
                    repr(now),
                    nx=True,
                    ex=int(max(window, TASK_GUARD_SECONDS)),
                )
                if window > 0:
                    pipe.set(
                        keys.alert_dedup(rule.name, "name-" + _digest(entry.get("name") or "")),
                        repr(now),
                        nx=True,
                        px=max(1, int(window * 1000)),
                    )
            answers = iter(pipe.execute())
            fresh = []
            for rule, entry in chunk:
                new_task = next(answers)
                new_name = next(answers) if rule.dedup(self.settings) > 0 else True
                if new_task and new_name:
                    fresh.append((rule, entry))
            room = max(0, MAX_EVENT_ALERTS - queued)
            if len(fresh) > room:
                logger.warning(
                    "alerts: %d task failures in one evaluation; %d alerts sent, the rest"
                    " only counted in the task list",
                    len(candidates),
                    MAX_EVENT_ALERTS,
                )
            fresh = fresh[:room]
            details = self._task_details([entry.get("id") or "" for _, entry in fresh])
            for (rule, entry), task in zip(fresh, details, strict=True):
                queued += self._queue(
                    rule, "firing", entry.get("name") or "", *task_alert(entry, task)
                )
        r.set(keys.alert_cursor, cursor)
        return queued

    def _task_details(self, ids: list[str]) -> list[dict[str, Any]]:
        if not ids:
            return []
        wanted = ("name", "exception", "worker", "retries", "failed", "queue")
        pipe = self.redis.pipeline(transaction=False)
        for task_id in ids:
            pipe.hmget(self.keys.task(task_id), wanted)
        return [
            {k: v for k, v in zip(wanted, values, strict=True) if v is not None}
            for values in pipe.execute()
        ]

    # -- condition rules ---------------------------------------------------------------
    def _transitions(
        self, rule: Rule, found: tuple[dict[str, dict], set[str] | None], now: float
    ) -> int:
        firing, known = found
        key = self.keys.alert_active(rule.name)
        active = {}
        for subject, text in self.redis.hgetall(key).items():
            try:
                active[subject] = json.loads(text)
            except ValueError:
                active[subject] = {"since": now, "sent": 0.0}
        window = rule.dedup(self.settings)
        queued = 0
        writes: dict[str, str] = {}
        for subject in sorted(firing)[:MAX_SUBJECTS]:
            summary, details = firing[subject]
            seen = active.get(subject)
            if seen is None:
                queued += self._queue(rule, "firing", subject, summary, details)
                writes[subject] = json.dumps({"since": now, "sent": now, "summary": summary})
            elif now - float(seen.get("sent") or 0) >= window and window > 0:
                queued += self._queue(rule, "firing", subject, summary, {**details, "repeat": True})
                writes[subject] = json.dumps({**seen, "sent": now, "summary": summary})
        gone = [s for s in active if s not in firing]
        for subject in gone:
            if (known is None or subject in known) and rule.send_resolved:
                since = finite_float(active[subject].get("since")) or now
                summary = (
                    f"Resolved after {_ago(now - since)}: {active[subject].get('summary', subject)}"
                )
                queued += self._queue(rule, "resolved", subject, summary, {"since": since})
        pipe = self.redis.pipeline(transaction=True)
        if gone:
            pipe.hdel(key, *gone)
        if writes:
            pipe.hset(key, mapping=writes)
        if writes or active:
            pipe.expire(key, int(max(2 * window, _DAY)))
        pipe.execute()
        return queued

    def _queue(self, rule: Rule, status: str, subject: str, summary: str, details: dict) -> int:
        now = self.clock()
        alert = {
            "id": uuid.uuid4().hex[:16],
            "rule": rule.name,
            "kind": rule.kind,
            "status": status,
            "subject": _cut(subject, 300),
            "summary": _cut(summary, 1000),
            "details": details,
            "at": now,
            "url": self._link(rule, subject, details),
            "format": rule.format,
            "webhook": rule.webhook,
            "attempts": 0,
            "errors": [],
        }
        if self.redis.zcard(self.keys.alert_pending) >= MAX_PENDING:
            self._finish(alert, "dropped", f"{MAX_PENDING} deliveries are waiting already")
            return 0
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.alert_deliveries, alert["id"], json.dumps(alert))
        pipe.zadd(self.keys.alert_pending, {alert["id"]: now})
        pipe.execute()
        logger.info("alert %s %s: %s", rule.name, status, alert["summary"])
        return 1

    def _link(self, rule: Rule, subject: str, details: Mapping[str, Any]) -> str | None:
        base = self.settings.alert_dashboard_url
        if not base:
            return None
        base = base.rstrip("/")
        if rule.kind == "task_failed" and details.get("task_id"):
            return f"{base}/task/{quote(str(details['task_id']), safe='')}"
        if rule.kind == "worker_offline":
            return f"{base}/worker/{quote(subject, safe='')}"
        if rule.kind == "queue":
            return f"{base}/queues"
        return f"{base}/alerts"

    # -- delivery -------------------------------------------------------------------
    def deliver_due(self) -> dict[str, int]:
        """Attempt the deliveries due now, for at most MONITOR_ALERT_BUDGET seconds."""
        s = self.settings
        started = time.monotonic()
        if self._take is None:
            self._take = self.redis.register_script(_TAKE_DUE)
        now = self.clock()
        hold = now + s.alert_budget + 2 * s.alert_timeout + 5
        ids = self._take(
            keys=[self.keys.alert_pending], args=[repr(now), DELIVER_BATCH, repr(hold)]
        )
        counts = {"sent": 0, "failed": 0, "retrying": 0}
        if not ids:
            return counts
        records = self.redis.hmget(self.keys.alert_deliveries, ids)
        for index, (alert_id, text) in enumerate(zip(ids, records, strict=True)):
            if time.monotonic() - started >= s.alert_budget:
                # Out of time: the rest are due again at once, for the next run.
                pipe = self.redis.pipeline(transaction=False)
                for later in ids[index:]:
                    pipe.zadd(self.keys.alert_pending, {later: now}, xx=True)
                pipe.execute()
                break
            try:
                alert = json.loads(text) if text else None
            except ValueError:
                alert = None
            if not isinstance(alert, dict):
                self.redis.zrem(self.keys.alert_pending, alert_id)
                continue
            alert["id"] = alert_id
            try:
                body = payload(alert)
            except (KeyError, TypeError, ValueError) as exc:  # a stored record gone bad
                self._finish(alert, "failed", f"unreadable alert: {type(exc).__name__}")
                counts["failed"] += 1
                continue
            result = send_webhook(str(alert.get("webhook", "")), body, s.alert_timeout)
            alert["attempts"] = int(alert.get("attempts") or 0) + 1
            alert["last_attempt"] = self.clock()
            alert["http_status"] = result.status
            if result.ok:
                self._finish(alert, "sent")
                counts["sent"] += 1
                continue
            alert["errors"] = [*alert.get("errors", []), result.error][-MAX_ERRORS:]
            if alert["attempts"] >= s.alert_max_attempts:
                logger.warning(
                    "alert %s (%s) not delivered after %d attempts: %s",
                    alert["id"],
                    alert["rule"],
                    alert["attempts"],
                    result.error,
                )
                self._finish(alert, "failed", result.error)
                counts["failed"] += 1
                continue
            delay = min(s.alert_backoff * 2 ** (alert["attempts"] - 1), MAX_BACKOFF)
            alert["next_attempt"] = self.clock() + delay
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(self.keys.alert_deliveries, alert_id, json.dumps(alert))
            pipe.zadd(self.keys.alert_pending, {alert_id: alert["next_attempt"]}, xx=True)
            pipe.execute()
            counts["retrying"] += 1
        return counts

    def _finish(self, alert: dict[str, Any], outcome: str, error: str | None = None) -> None:
        entry = dict(alert)
        entry["delivery"] = outcome
        entry["webhook"] = mask_webhook(alert.get("webhook", ""))
        entry["ended"] = self.clock()
        if error:
            entry["error"] = error
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self.keys.alert_pending, alert["id"])
        pipe.hdel(self.keys.alert_deliveries, alert["id"])
        pipe.xadd(
            self.keys.alert_log,
            {"alert": json.dumps(entry)},
            maxlen=self.settings.alert_log_max,
            approximate=False,
        )
        pipe.execute()

    # -- shared inputs of one run ----------------------------------------------------
    def minute_counters(self, minutes: int, now: float) -> list[dict[str, str]]:
        """Counters of the last ``minutes`` minutes (``store.minute_stats``, the
        store's public read); past minutes are read once and kept."""
        last = int(now // 60)
        first = last - minutes + 1
        # The last two minutes still change (an event's time is its own, a bit late).
        cached_until = last - 2
        missing_old = [m for m in range(first, cached_until + 1) if m not in self._minutes]
        if missing_old:
            # one read from the oldest missing minute to now covers both
            span = last - missing_old[0] + 1
            fresh = self.store.minute_stats(span, now=now)
        else:
            fresh = self.store.minute_stats(min(2, minutes), now=now)
        for entry in fresh:
            # the global counters and the per-name ones (``state:FAILURE|proj.add``)
            counters = {**entry["counters"], **entry.get("names", {})}
            self._minutes[int(entry["minute"]) // 60] = counters
        oldest = last - int(_DAY // 60) - 1
        for minute in [m for m in self._minutes if m < oldest]:
            del self._minutes[minute]
        return [self._minutes.get(m, {}) for m in range(first, last + 1)]


def task_alert(entry: Mapping[str, str], task: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    name = entry.get("name") or task.get("name") or "?"
    worker = task.get("worker") or entry.get("worker") or ""
    exception = _cut(task.get("exception") or "", 500)
    retries = task.get("retries")
    summary = f"Task {name} failed"
    if retries not in (None, "", "0"):
        summary += f" after {retries} retries"
    if worker:
        summary += f" on {worker}"
    if exception:
        summary += f": {exception}"
    details = {
        "task_id": entry.get("id"),
        "name": name,
        "worker": worker or None,
        "exception": exception or None,
        "retries": retries,
        "queue": task.get("queue"),
    }
    return summary, details


Found = tuple[dict[str, tuple[str, dict[str, Any]]], set[str] | None]


def _failure_rate(engine: Engine, rule: Rule, now: float, shared: dict[str, Any]) -> Found:
    window = rule.window_seconds or 300.0
    kept = float(engine.settings.stats_ttl)
    if (rule.per_name or rule.pattern != "*") and window > kept:
        # Per-name minute counters live MONITOR_STATS_TTL seconds: say the window is cut.
        engine.problems[rule.name] = (
            f"window_seconds {window:g} is longer than MONITOR_STATS_TTL ({kept:g} s): "
            f"the per-name counters cover only the last {kept:g} s"
        )
    counters = engine.minute_counters(max(1, math.ceil(window / 60)), now)
    totals: dict[str, list[int]] = {}  # subject -> [failed, succeeded]
    aggregate = not rule.per_name
    for minute in counters:
        if aggregate and rule.pattern == "*":
            bucket = totals.setdefault(rule.pattern, [0, 0])
            bucket[0] += _int(minute.get("state:FAILURE"))
            bucket[1] += _int(minute.get("state:SUCCESS"))
            continue
        # one spelling per minute: both could describe the same counters
        legacy = any(f.startswith("name:") for f in minute)
        for field_name, value in minute.items():
            if legacy != field_name.startswith("name:"):
                continue
            name, state = _named_state(field_name)
            if state not in ("FAILURE", "SUCCESS") or not rule.matches(name):
                continue
            bucket = totals.setdefault(rule.pattern if aggregate else name, [0, 0])
            bucket[0 if state == "FAILURE" else 1] += _int(value)
    firing = {}
    threshold = rule.threshold_percent or 0.0
    for subject, (failed, succeeded) in totals.items():
        finished = failed + succeeded
        if finished < (rule.min_count or 1):
            continue
        rate = 100.0 * failed / finished
        if rate > threshold:
            what = "tasks" if subject == "*" else (f"tasks {subject}" if aggregate else subject)
            firing[subject] = (
                f"{rate:.1f} % of {what} failed over the last {_ago(window)}"
                f" ({failed} of {finished}; threshold {threshold:g} %)",
                {
                    "rate": round(rate, 2),
                    "failed": failed,
                    "finished": finished,
                    "window_seconds": window,
                    "threshold_percent": threshold,
                },
            )
    # Any subject with data is known (a name not seen in the window: unknown).
    return firing, set(totals) | {rule.pattern}


def _named_state(field_name: str) -> tuple[str, str]:
    """(task name, state) of a per-name counter: ``state:FAILURE|proj.add`` (the
    stats hashes' spelling, monitor/vocabulary.py) or ``name:proj.add:FAILURE``
    (what ``store.minute_stats`` also gives); ("", "") for any other field."""
    if field_name.startswith("name:"):
        name, _, state = field_name[5:].rpartition(":")
        return name, state
    if field_name.startswith("state:") and "|" in field_name:
        base, _, name = field_name.partition("|")
        return name, base[6:]
    return "", ""


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _worker_offline(engine: Engine, rule: Rule, now: float, shared: dict[str, Any]) -> Found:
    if "workers" not in shared:
        shared["workers"] = engine.store.workers(now=now)
    firing, known = {}, set()
    limit = rule.seconds if rule.seconds is not None else 60.0
    for worker in shared["workers"]:
        host = str(worker.get("hostname") or "")
        if not host or not rule.matches(host):
            continue
        known.add(host)
        if worker.get("online"):
            continue
        last = finite_float(worker.get("last_heartbeat"))
        offline_at = finite_float(worker.get("offline_at"))
        since = (
            offline_at if offline_at is not None and (last is None or offline_at >= last) else last
        )
        if since is None or now - since < limit:
            continue
        how = "shut down" if offline_at is not None and since == offline_at else "no heartbeat"
        firing[host] = (
            f"Worker {host} offline for {_ago(now - since)} ({how})",
            {
                "worker": host,
                "offline_since": since,
                "seconds": round(now - since, 1),
                "last_heartbeat": last,
            },
        )
    return firing, known


def _queue_depth(engine: Engine, rule: Rule, now: float, shared: dict[str, Any]) -> Found:
    if "queues" not in shared:
        shared["queues"] = queues.latest(engine.store)
    firing, known = {}, set()
    for name, sample in list(shared["queues"].items())[:10_000]:
        name = str(name)
        if not rule.matches(name):
            continue
        known.add(name)
        sample = sample if isinstance(sample, Mapping) else {}
        depth = finite_float(sample.get("depth"))
        age = finite_float(sample.get("oldest_age"))
        reasons = []
        if rule.max_depth is not None and depth is not None and depth > rule.max_depth:
            reasons.append(f"depth {depth:.0f} > {rule.max_depth}")
        if rule.max_age is not None and age is not None and age > rule.max_age:
            reasons.append(f"oldest message {_ago(age)} old > {_ago(rule.max_age)}")
        if reasons:
            firing[name] = (
                f"Queue {name}: {', '.join(reasons)}",
                {
                    "queue": name,
                    "depth": depth,
                    "oldest_age": age,
                    "consumers": sample.get("consumers"),
                    "broker": sample.get("broker"),
                },
            )
    return firing, known


def _beat_missed(engine: Engine, rule: Rule, now: float, shared: dict[str, Any]) -> Found:
    if "periodic" not in shared:
        app = engine.celery_app
        if app is None:
            app = beat.app_for(engine.store)  # the app the web tier was given
        shared["periodic"] = beat.periodic_tasks(engine.store, app, now=now)
    firing, known = {}, set()
    for entry in list(shared["periodic"])[:10_000]:
        if not isinstance(entry, Mapping):
            continue
        name = str(entry.get("name") or "")
        if not name or not rule.matches(name):
            continue
        known.add(name)
        if entry.get("missed"):
            due = finite_float(entry.get("next_run"))
            last = finite_float(entry.get("last_run"))
            when = f" (last run {_ago(now - last)} ago)" if last is not None else " (never seen)"
            firing[name] = (
                f"Periodic task {name} ({entry.get('task')}) did not run when due{when}",
                {
                    "periodic": name,
                    "task": entry.get("task"),
                    "schedule": _cut(str(entry.get("schedule")), 200),
                    "last_run": last,
                    "next_run": due,
                    "source": entry.get("source"),
                },
            )
    return firing, known


_CONDITIONS: dict[str, Callable[[Engine, Rule, float, dict[str, Any]], Found]] = {
    "failure_rate": _failure_rate,
    "worker_offline": _worker_offline,
    "queue": _queue_depth,
    "beat_missed": _beat_missed,
}


# -- the elected job -----------------------------------------------------------------------
def run(ctx: JobContext) -> dict[str, int]:
    engine = ctx.state.get("engine")
    if engine is None:
        engine = ctx.state["engine"] = Engine(ctx.store, ctx.settings, ctx.celery_app)
    return engine.run()


def jobs(settings: Any) -> list[Job]:
    """The alert evaluator, one per cluster (the rules file is checked here too)."""
    file_rules(settings)  # RuleError (a ValueError) at start-up
    ttl = max(3 * settings.alert_interval, settings.alert_budget + 3 * settings.alert_timeout + 5)
    return [Job("alerts", settings.alert_interval, run, lease_ttl=ttl)]


# -- reads for the web tier ------------------------------------------------------------------
def sent_log(store: Any, limit: int = 100, before: str | None = None) -> list[dict[str, Any]]:
    """Alerts whose delivery ended, newest first (``before``: a stream id to page from)."""
    high = f"({before}" if before else "+"
    try:
        entries = store.redis.xrevrange(store.keys.alert_log, max=high, min="-", count=limit)
    except redis.ResponseError:  # "(0-0", an id beyond 64 bits: nothing is older
        return []
    out = []
    for entry_id, values in entries:
        try:
            alert = json.loads(values.get("alert") or "")
        except ValueError:
            continue
        if isinstance(alert, dict):
            alert["log_id"] = entry_id
            out.append(alert)
    return out


def pending(store: Any, limit: int = 100) -> list[dict[str, Any]]:
    """Deliveries not ended yet (next attempt first), webhooks masked."""
    ids = store.redis.zrange(store.keys.alert_pending, 0, limit - 1, withscores=True)
    if not ids:
        return []
    texts = store.redis.hmget(store.keys.alert_deliveries, [i for i, _ in ids])
    out = []
    for (_, due), text in zip(ids, texts, strict=True):
        try:
            alert = json.loads(text) if text else None
        except ValueError:
            alert = None
        if isinstance(alert, dict):
            alert["webhook"] = mask_webhook(str(alert.get("webhook", "")))
            alert["delivery"] = "pending"
            alert["next_attempt"] = due
            out.append(alert)
    return out


def active(store: Any, rules: Iterable[Rule], limit: int = MAX_SUBJECTS) -> list[dict[str, Any]]:
    """Subjects of condition rules firing now."""
    rules = [r for r in rules if r.kind != "task_failed"]
    if not rules:
        return []
    pipe = store.redis.pipeline(transaction=False)
    for rule in rules:
        pipe.hgetall(store.keys.alert_active(rule.name))
    out = []
    for rule, subjects in zip(rules, pipe.execute(), strict=True):
        for subject in sorted(subjects)[:limit]:
            try:
                seen = json.loads(subjects[subject])
            except ValueError:
                seen = {}
            out.append(
                {
                    "rule": rule.name,
                    "kind": rule.kind,
                    "subject": subject,
                    "since": seen.get("since"),
                    "sent": seen.get("sent"),
                    "summary": seen.get("summary"),
                }
            )
    return out


def live_snapshot(store: Any, limit: int = 50) -> dict[str, Any]:
    """What the Alerts page's live room gets: the newest sent, pending, firing, status.
    Shared by every viewer: webhooks are masked in all of it."""
    rules, _problems = all_rules(store, store.settings)
    return {
        "sent": sent_log(store, limit),
        "pending": pending(store, limit),
        "active": active(store, rules),
        "status": status(store),
    }


def status(store: Any) -> dict[str, Any]:
    raw = store.redis.hgetall(store.keys.alert_status)
    try:
        problems = json.loads(raw.get("problems") or "{}")
    except ValueError:
        problems = {}
    return {"last_run": finite_float(raw.get("last_run")), "problems": problems}


__all__ = [
    "KINDS",
    "FORMATS",
    "Rule",
    "RuleError",
    "RuleConflict",
    "parse_rule",
    "load_rules_file",
    "file_rules",
    "ui_rules",
    "put_rule",
    "delete_rule",
    "all_rules",
    "payload",
    "slack_payload",
    "send_webhook",
    "Engine",
    "jobs",
    "run",
    "sent_log",
    "pending",
    "active",
    "status",
    "RULE_FIELDS",
]
