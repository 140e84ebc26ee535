"""The alert endpoints (``<prefix>/api/v1/alerts``): the sent log, the rules, and the
operators' changes to the rules made in the UI.

Handlers only parse parameters and shape answers: :mod:`monitor.alerts` owns the
rules, their validation and every alert read. Reading follows the viewer rules
(``security.protect``); a viewer sees webhook URLs masked (a Slack webhook URL is
its own secret). Creating, replacing, deleting and testing a rule are actions
(:func:`monitor.web.security.action`: operators, CSRF for browser sessions,
audited, refused attempts included). Rules of the rules file are read-only here.

Each endpoint's example request and response is in its docstring; the OpenAPI
entries are :func:`alerts_paths`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from .. import alerts
from ..actions import ActionError
from ..auth import Role
from .actions_api import ACTION_ERRORS, body, json_response, operation, path_param
from .api import error, register_errors
from .queries import QueryError, parse_bounded_int
from .security import action, actions_refusal, principal, users_configured

logger = logging.getLogger(__name__)

alerts_api = Blueprint("monitor_alerts_api", __name__)
register_errors(alerts_api)

#: Alerts one GET returns at most (of the sent log; of the pending ones).
MAX_LIMIT = 500
#: A rule's request body, in bytes (a rule is a few hundred).
MAX_BODY = alerts.MAX_RULE_BYTES
_LOG_ID = re.compile(r"\d{1,20}-\d{1,20}")


@alerts_api.errorhandler(alerts.RuleError)
def _bad_rule(exc: alerts.RuleError) -> Any:
    response = jsonify({"error": str(exc), "field": exc.field, "code": "invalid"})
    response.status_code = 400
    return response


@alerts_api.errorhandler(alerts.RuleConflict)
def _conflict(exc: alerts.RuleConflict) -> Any:
    response = jsonify({"error": exc.message, "code": exc.code})
    response.status_code = exc.status
    return response


def _ext() -> Any:
    return current_app.extensions["monitor"]


def _reveal() -> bool:
    """Full webhook URLs for operators (and everyone on a monitor without users)."""
    return not users_configured() or principal().allows(Role.OPERATOR)


def _may_edit() -> bool:
    who = principal()
    return actions_refusal() is None and who.authenticated and who.allows(Role.OPERATOR)


@alerts_api.get("/alerts")
def sent() -> Any:
    """Alerts: the sent log (newest first), deliveries still pending, firing subjects.

    ``GET /api/v1/alerts?limit=50`` ->
    ``{"sent": [{"id": "3f0c...", "rule": "payments", "kind": "task_failed",
    "status": "firing", "subject": "proj.pay", "summary": "Task proj.pay failed ...",
    "delivery": "sent", "attempts": 1, "http_status": 200, "at": 1700000000.0,
    "webhook": "https://hooks.slack.com/…", "log_id": "1700000000000-0"}, ...],
    "pending": [...], "active": [{"rule", "subject", "since", "summary"}, ...],
    "status": {"last_run": 1700000000.0, "problems": {}}, "next_before": "1700...-0"}``.
    ``before=<log_id>`` pages further back.
    """
    limit = parse_bounded_int("limit", request.args.get("limit"), 100, 1, MAX_LIMIT)
    before = request.args.get("before") or None
    if before is not None and not _LOG_ID.fullmatch(before):
        raise QueryError("before must be a log_id such as 1700000000000-0")
    store = _ext().store
    rules, _problems = alerts.all_rules(store, _ext().settings)
    log = alerts.sent_log(store, limit, before)
    return jsonify(
        {
            "sent": log,
            "pending": alerts.pending(store, limit) if before is None else [],
            "active": alerts.active(store, rules) if before is None else [],
            "status": alerts.status(store),
            "next_before": log[-1]["log_id"] if len(log) == limit else None,
        }
    )


@alerts_api.get("/alerts/rules")
def rules() -> Any:
    """Every rule: the rules file's (read-only) and the operators' (editable).

    ``GET /api/v1/alerts/rules`` ->
    ``{"rules": [{"name": "payments", "kind": "task_failed", "pattern": "proj.pay*",
    "webhook": "https://hooks.slack.com/…", "format": "slack", "dedup_seconds": null,
    "enabled": true, "description": "", "source": "file", "editable": false}, ...],
    "problems": {}, "file": "/etc/monitor/alerts.toml", "can_edit": false,
    "kinds": {...fields of each kind...}, "max_ui_rules": 100}``
    """
    ext = _ext()
    found, problems = alerts.all_rules(ext.store, ext.settings)
    reveal = _reveal()
    status = alerts.status(ext.store)
    problems = {**status.get("problems", {}), **problems}
    return jsonify(
        {
            "rules": [
                {**rule.as_dict(reveal), "source": rule.source, "editable": rule.source == "ui"}
                for rule in found
            ],
            "problems": problems,
            "file": ext.settings.alert_rules,
            "can_edit": _may_edit(),
            "kinds": alerts.kind_fields(),
            "max_ui_rules": alerts.MAX_UI_RULES,
        }
    )


def _rule_body() -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ActionError(f"the request body is larger than {MAX_BODY} bytes", 400, "invalid")
    request.max_content_length = MAX_BODY
    if not request.is_json:
        raise ActionError("send the rule as a JSON object (Content-Type: application/json)")
    try:
        data = request.get_json(silent=True)
    except RecursionError:
        raise ActionError("the JSON body is nested too deep", 400, "invalid") from None
    if not isinstance(data, dict):
        raise ActionError("the JSON body must be an object (the rule)", 400, "invalid")
    return data


def _name(name: str) -> str:
    if len(name) > 64 or not alerts.valid_name(name):
        raise ActionError(f"no rule can be named {name[:70]!r}", 404, "not_found")
    return name


@alerts_api.post("/alerts/rules")
@action("alerts.rule.create")
def create_rule() -> Any:
    """Create a rule (operators). The body is the rule; its fields are the file's.

    ``POST /api/v1/alerts/rules {"name": "workers", "kind": "worker_offline",
    "pattern": "celery@*", "seconds": 120, "webhook": "https://hooks.slack.com/services/T/B/X",
    "format": "slack"}`` -> 201 ``{"rule": {...}}``; 400 naming the field that is
    wrong (``{"error": "rule 'workers': field 'seconds': must be ...", "field": "seconds"}``),
    409 when the name is taken.
    """
    ext = _ext()
    rule = alerts.put_rule(ext.store, ext.settings, _rule_body(), create=True)
    return {"rule": {**rule.as_dict(), "source": "ui", "editable": True}}, 201


@alerts_api.post("/alerts/rules/<name>")
@action("alerts.rule.update", target="name")
def update_rule(name: str) -> Any:
    """Replace a rule made in the UI (its name stays).

    ``POST /api/v1/alerts/rules/workers {"kind": "worker_offline", "seconds": 300,
    "webhook": "https://..."}`` -> ``{"rule": {...}}``; 404 unknown, 409 a file rule.
    """
    ext = _ext()
    rule = alerts.put_rule(ext.store, ext.settings, _rule_body(), create=False, name=_name(name))
    return {"rule": {**rule.as_dict(), "source": "ui", "editable": True}}


@alerts_api.delete("/alerts/rules/<name>")
@action("alerts.rule.delete", target="name")
def delete_rule(name: str) -> Any:
    """Delete a rule made in the UI (and forget what it had firing).

    ``DELETE /api/v1/alerts/rules/workers`` -> ``{"deleted": "workers"}``
    """
    ext = _ext()
    alerts.delete_rule(ext.store, ext.settings, _name(name))
    return {"deleted": name}


@alerts_api.post("/alerts/rules/<name>/test")
@action("alerts.rule.test", target="name")
def test_rule(name: str) -> Any:
    """Send a test message to a rule's webhook now (one attempt, not logged).

    ``POST /api/v1/alerts/rules/workers/test`` ->
    ``{"ok": true, "http_status": 200, "error": null}``
    """
    ext = _ext()
    name = _name(name)
    found, _problems = alerts.all_rules(ext.store, ext.settings)
    rule = next((r for r in found if r.name == name), None)
    if rule is None:
        raise ActionError(f"no rule named {name!r}", 404, "not_found")
    result = alerts.send_test(rule, ext.settings, by=principal().name)
    return {"ok": result.ok, "http_status": result.status, "error": result.error}


# -- OpenAPI ---------------------------------------------------------------------------------
def alerts_paths() -> dict[str, Any]:
    """OpenAPI 3 path entries of this module's endpoints (merged into /api/openapi.json)."""
    reads = {
        "400": json_response("a bad parameter"),
        "401": json_response("this monitor has users: log in first"),
        "429": json_response("too many failed logins for this user or address"),
        "503": json_response("Redis is unreachable"),
    }
    name = [path_param("name", "rule name")]
    rule_schema: dict[str, Any] = {}
    for field_name in alerts.RULE_FIELDS:
        rule_schema[field_name] = alerts.field_schema(field_name)
    errors = {
        **ACTION_ERRORS,
        "400": json_response("the rule is invalid: error names the field (also in 'field')"),
        "404": json_response("no such rule made in the UI"),
        "409": json_response("code exists, file_rule (the rules file's rules are read-only), full"),
    }

    def ok(description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }

    return {
        "/api/v1/alerts": {
            "get": {
                "summary": "Sent alerts (newest first), pending deliveries, firing subjects",
                "tags": ["alerts"],
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "alerts returned at most",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                    },
                    {
                        "name": "before",
                        "in": "query",
                        "required": False,
                        "description": "a log_id: older entries only (next_before of a page)",
                        "schema": {"type": "string", "pattern": r"^\d{1,20}-\d{1,20}$"},
                    },
                ],
                "responses": {"200": ok("sent, pending, active, status, next_before"), **reads},
            }
        },
        "/api/v1/alerts/rules": {
            "get": {
                "summary": "Alert rules: the rules file's (read-only) and the UI's",
                "tags": ["alerts"],
                "parameters": [],
                "responses": {"200": ok("rules, problems, file, can_edit, kinds"), **reads},
            },
            **operation(
                "post",
                "Create an alert rule (operators)",
                "alerts",
                [],
                {"201": ok("the rule as stored")},
                body(rule_schema, ["name", "kind", "webhook"]),
                errors,
            ),
        },
        "/api/v1/alerts/rules/{name}": {
            **operation(
                "post",
                "Replace an alert rule made in the UI (operators)",
                "alerts",
                name,
                {"200": ok("the rule as stored")},
                body(rule_schema, ["kind", "webhook"]),
                errors,
            ),
            **operation(
                "delete",
                "Delete an alert rule made in the UI (operators)",
                "alerts",
                name,
                {"200": ok("deleted: the name")},
                None,
                errors,
            ),
        },
        "/api/v1/alerts/rules/{name}/test": operation(
            "post",
            "Send a test message to a rule's webhook now (operators)",
            "alerts",
            name,
            {"200": ok("ok, http_status, error of the one attempt")},
            None,
            {**ACTION_ERRORS, "404": json_response("no such rule")},
        ),
    }


__all__ = ["alerts_api", "alerts_paths", "error"]
