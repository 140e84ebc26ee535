"""Who is asking, and may they: the web tier's authentication, authorisation, CSRF,
security headers, Host allow-list and the audit of every action.

Every request to the monitor's blueprints (pages, API, Flower API, metrics) goes
through :func:`guard` before its view and :func:`secure_headers` after it; a host
app's own routes are never touched. The rules:

* **Who.** :func:`principal` is, in this order: ``Authorization: Bearer <token>``,
  ``Authorization: Basic`` (stored users, and Flower's ``--basic-auth`` users as
  operators), the opt-in trusted header of an authenticating proxy, the session
  cookie of the login page; else anonymous. Credentials that are given but wrong
  answer 401 (429 while a name or address is throttled), never "anonymous".
* **Reading.** Without any user configured the monitor is open, as before (and
  ``serve`` warns when it binds beyond loopback). Once users exist, every page
  and API call needs a viewer at least: pages redirect to the login page, the
  API answers 401.
* **Acting.** Views that act on the cluster are wrapped in :func:`action`: off
  with no user configured or with ``--read-only`` (403 saying how to enable
  them), operators only, CSRF-checked for browser sessions, refused for a
  cross-site ``Origin``, and audited, refused attempts included.
* **Exposure.** A Host allow-list against DNS rebinding (the standalone server:
  by default the bound address and localhost names; embedded in a host app only
  when ``MONITOR_ALLOWED_HOSTS`` is set), a Content-Security-Policy without
  inline scripts or styles, ``frame-ancestors 'none'``, ``nosniff``, a referrer
  policy, and ``Cache-Control: no-store`` on the API.

Sessions are Flask's signed cookie (HttpOnly, SameSite=Lax, Secure when the
request came over HTTPS) holding the user's name and login time: a removed user
or an expired session is anonymous at once, and a role change applies at the
next request. CSRF tokens are Flask-WTF's (signed, bound to the session).
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import redis
from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, generate_csrf, validate_csrf
from werkzeug.exceptions import HTTPException
from wtforms.validators import ValidationError

from .. import auth
from ..actions import ActionError, Controller
from ..audit import AuditLog
from ..auth import ANONYMOUS, Principal, Role, TooManyAttempts

logger = logging.getLogger(__name__)

SESSION_KEY = "monitor_auth"
CSRF_HEADER = "X-CSRFToken"
#: Seconds a "are users configured?" answer is reused by a process (one Redis
#: round trip per request otherwise).
USERS_CONFIGURED_TTL = 2.0
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'; object-src 'none'"
)
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Endpoints anyone may reach even when users exist (the login page needs its CSS).
_OPEN_ENDPOINTS = frozenset({"monitor.static", "monitor.login", "monitor.logout"})
#: Parameters an audit entry keeps per action (a form with 10,000 fields is not logged whole).
_MAX_PARAMS = 50


class Denied(Exception):
    """A request refused by the rules above: answered as JSON (API) or a page."""

    def __init__(self, message: str, status: int, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.headers = headers or {}


# -- the pieces kept per app -------------------------------------------------------
def _ext() -> Any:
    return current_app.extensions["monitor"]


def auth_store() -> auth.AuthStore:
    return _ext().auth


def audit_log() -> AuditLog:
    return _ext().audit


def controller() -> Controller:
    ext = _ext()
    if ext.controller is None:
        ext.controller = Controller(ext.inspector.app, ext.store, ext.settings)
    return ext.controller


def users_configured() -> bool:
    """Any user, token, basic-auth user or trusted header (cached a moment)."""
    ext = _ext()
    now = time.monotonic()
    cached = ext.users_cache
    if cached is not None and now - cached[0] < USERS_CONFIGURED_TTL:
        return cached[1]
    configured = ext.auth.users_configured()
    ext.users_cache = (now, configured)
    return configured


def actions_refusal() -> str | None:
    """Why nobody may act right now, or None."""
    settings = _ext().settings
    if settings.read_only:
        return "This monitor runs read-only (--read-only or MONITOR_READ_ONLY)."
    if not users_configured():
        return (
            "Actions need a user: run `python -m monitor users add NAME --role operator` "
            "(or pass Flower's --basic-auth), then log in."
        )
    return None


# -- who is asking -------------------------------------------------------------------
def client_addr() -> str | None:
    return request.remote_addr


def principal() -> Principal:
    """The caller of this request (see the module docstring); cached on ``g``."""
    found = g.get("monitor_principal")
    if found is None:
        found = _resolve()
        g.monitor_principal = found
    return found


def _resolve() -> Principal:
    store = auth_store()
    settings = _ext().settings
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        found = store.verify_token(header[7:].strip())
        if found is None:
            raise Denied("invalid or revoked token", 401)
        return found
    if header[:6].lower() == "basic ":
        name, password = _basic_credentials(header[6:])
        try:
            found = store.login(name, password, client_addr(), via="basic")
        except TooManyAttempts as exc:
            raise Denied(
                "too many failed logins; try again later",
                429,
                {"Retry-After": str(int(exc.retry_after) + 1)},
            ) from None
        if found is None:
            raise Denied("wrong user name or password", 401, _BASIC_CHALLENGE)
        return found
    if settings.auth_header:
        found = auth.header_principal(settings, request.headers)
        if found is not None:
            return found
    return _session_principal(store, settings)


_BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="celery monitor", charset="UTF-8"'}


def _basic_credentials(encoded: str) -> tuple[str, str]:
    if len(encoded) > 4096:
        raise Denied("Authorization header too long", 400)
    try:
        text = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Denied("malformed Basic credentials", 401, _BASIC_CHALLENGE) from None
    name, sep, password = text.partition(":")
    if not sep:
        raise Denied("malformed Basic credentials", 401, _BASIC_CHALLENGE)
    return name, password


def _session_principal(store: auth.AuthStore, settings: Any) -> Principal:
    data = session.get(SESSION_KEY)
    if not isinstance(data, dict):
        return ANONYMOUS
    name, at = data.get("name"), data.get("at")
    if not isinstance(name, str) or not isinstance(at, int | float):
        session.pop(SESSION_KEY, None)
        return ANONYMOUS
    if time.time() - at > settings.session_lifetime:
        session.pop(SESSION_KEY, None)
        return ANONYMOUS
    user = store.get_user(name)
    if user is not None:
        return Principal(name, Role.parse(user["role"]), "session")
    if name in auth.basic_auth_users(settings):  # Flower's --basic-auth: operators
        return Principal(name, Role.OPERATOR, "session")
    session.pop(SESSION_KEY, None)  # removed since: the session dies with the user
    return ANONYMOUS


def login_session(found: Principal) -> None:
    session.clear()
    session[SESSION_KEY] = {"name": found.name, "at": time.time()}
    session.permanent = True


# -- rules applied to every request of the monitor's blueprints ----------------------
def guard() -> Any:
    """before_request of every monitor blueprint."""
    ext = _ext()
    try:
        _check_host(ext)
        who = principal()
        if request.method in _UNSAFE_METHODS:
            _check_origin()
        if request.endpoint not in _OPEN_ENDPOINTS and not who.authenticated and users_configured():
            if _is_page():
                return redirect(url_for("monitor.login", next=_local_path()))
            raise Denied("log in first: this monitor has users", 401)
    except Denied as exc:
        _audit_refused_action(exc)
        return denied_response(exc)
    except redis.RedisError as exc:
        return denied_response(Denied(f"Redis unavailable: {type(exc).__name__}", 503))
    return None


def _audit_refused_action(exc: Denied) -> None:
    """An action refused before its view (bad credentials, no login, wrong Host,
    cross-site) is an attempted action all the same: audit it."""
    view = current_app.view_functions.get(request.endpoint or "")
    marked = getattr(view, "monitor_action", None)
    if marked is None:
        return
    name, target = marked
    who = g.get("monitor_principal") or _claimed()
    subject = str((request.view_args or {}).get(target, "")) if target else ""
    _audit(who, name, subject, ok=False, status=exc.status, result=exc.message)


def _claimed() -> Principal:
    """Who the refused credentials claimed to be, for the audit (never trusted)."""
    header = request.headers.get("Authorization", "")
    if header[:6].lower() == "basic ":
        try:
            name = _basic_credentials(header[6:])[0]
        except Denied:
            name = ""
        if name:
            return Principal(f"{name[:64]} (not authenticated)", Role.VIEWER, "anonymous")
    if header[:7].lower() == "bearer ":
        return Principal("(invalid token)", Role.VIEWER, "anonymous")
    return ANONYMOUS


def _check_host(ext: Any) -> None:
    allowed = ext.allowed_hosts
    if allowed and not auth.host_allowed(request.host, allowed):
        raise Denied(
            "unknown Host header; add it to MONITOR_ALLOWED_HOSTS if this monitor is served "
            "under that name",
            400,
        )


def _check_origin() -> None:
    """A browser's cross-site write is refused whatever its credentials: a session
    cookie (SameSite=Lax already keeps it off cross-site POSTs) or Basic
    credentials the browser remembered. Scripts send no Origin."""
    origin = request.headers.get("Origin")
    site = request.headers.get("Sec-Fetch-Site")
    if site == "cross-site":
        raise Denied("cross-site request refused", 403)
    if origin and origin != "null" and urlsplit(origin).netloc != request.host:
        raise Denied("cross-site request refused (Origin does not match Host)", 403)
    if origin == "null":
        raise Denied("cross-site request refused (opaque Origin)", 403)


def _is_page() -> bool:
    return (request.blueprint or "") == "monitor"


def _local_path() -> str:
    path = request.full_path if request.query_string else request.path
    return path if path.startswith("/") and not path.startswith("//") else "/"


def denied_response(exc: Denied) -> Response:
    if _is_page() and exc.status in (401, 403):
        response = Response(
            render_template("monitor/denied.html", message=exc.message, status=exc.status),
            status=exc.status,
            mimetype="text/html",
        )
    else:
        response = jsonify({"error": exc.message})
        response.status_code = exc.status
    for name, value in exc.headers.items():
        response.headers[name] = value
    return response


def secure_headers(response: Response) -> Response:
    """after_request of every monitor blueprint."""
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "same-origin")
    if not _is_page() or request.endpoint in ("monitor.login",):
        headers["Cache-Control"] = "no-store"
    return response


def protect(blueprint: Blueprint) -> None:
    """Apply :func:`guard` and :func:`secure_headers` to one of the monitor's blueprints."""
    blueprint.before_request(guard)
    blueprint.after_request(secure_headers)


# -- actions ---------------------------------------------------------------------------
def request_params() -> dict[str, Any]:
    """The request's parameters: a JSON object body, else the form, then the query."""
    params: dict[str, Any] = dict(request.args.items())
    if request.is_json:
        try:
            body = request.get_json(silent=True)
        except RecursionError:  # silent= covers ValueError only: "[[[[..." 100k deep
            raise ActionError("the JSON body is nested too deep", 400, "invalid") from None
        if isinstance(body, dict):
            params.update(body)
        elif body is not None:
            raise ActionError("the JSON body must be an object", 400, "invalid")
    else:
        params.update({k: v for k, v in request.form.items() if k != "csrf_token"})
    return params


def _audit_params() -> dict[str, Any]:
    try:
        params = request_params()
    except ActionError:
        return {"body": "(not a JSON object)"}
    return dict(list(params.items())[:_MAX_PARAMS])


def _check_csrf(who: Principal) -> None:
    if who.via != "session":
        return  # Basic, Bearer, the proxy's header: no cookie a third site can ride
    token = request.headers.get(CSRF_HEADER) or request.form.get("csrf_token")
    try:
        validate_csrf(token)
    except (ValidationError, CSRFError) as exc:
        raise Denied(f"CSRF check failed: {exc}", 403) from None


def require(role: Role | str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A read endpoint that needs ``role`` (once users exist; open without users)."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                check_role(role)
            except Denied as exc:
                return denied_response(exc)
            return view(*args, **kwargs)

        return wrapper

    return decorate


def check_role(role: Role | str) -> None:
    """Raise Denied unless the caller holds ``role`` (nobody needs one without users)."""
    if not users_configured():
        return
    who = principal()
    if not who.authenticated:
        raise Denied("log in first: this monitor has users", 401)
    if not who.allows(role):
        raise Denied(f"this needs the {Role.parse(role).value} role; you are a {who.role}", 403)


def action(name: str, target: str | None = None) -> Callable[[Callable[..., Any]], Any]:
    """A view that acts on the cluster: refused unless allowed, audited either way.

    The view returns a dict (200 JSON), a ``(dict, status)`` tuple or a Response;
    an :class:`~monitor.actions.ActionError` becomes ``{"error", "code"}`` with
    its status.
    """

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            who = g.get("monitor_principal") or ANONYMOUS
            subject = str(kwargs.get(target, "")) if target else ""
            try:
                who = principal()
                refusal = actions_refusal()
                if refusal:
                    raise Denied(refusal, 403)
                if not who.authenticated:
                    raise Denied("log in first: actions need an operator", 401)
                if not who.allows(Role.OPERATOR):
                    raise Denied(f"actions need the operator role; you are a {who.role}", 403)
                _check_csrf(who)
                result = view(*args, **kwargs)
            except Denied as exc:
                _audit(who, name, subject, ok=False, status=exc.status, result=exc.message)
                return denied_response(exc)
            except ActionError as exc:
                _audit(who, name, subject, ok=False, status=exc.status, result=exc.message)
                response = jsonify({"error": exc.message, "code": exc.code})
                response.status_code = exc.status
                return response
            except HTTPException as exc:
                _audit(who, name, subject, ok=False, status=exc.code or 500, result=exc.name)
                raise
            except Exception as exc:
                _audit(who, name, subject, ok=False, status=500, result=type(exc).__name__)
                raise
            response = _as_response(result)
            ok = response.status_code < 400
            body = response.get_json(silent=True) if response.is_json else None
            _audit(who, name, subject, ok=ok, status=response.status_code, result=body)
            return response

        wrapper.monitor_action = (name, target)  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _as_response(result: Any) -> Response:
    if isinstance(result, Response):
        return result
    status = 200
    if isinstance(result, tuple):
        result, status = result
    response = jsonify(result)
    response.status_code = status
    return response


def _audit(who: Principal, name: str, target: str, *, ok: bool, status: int, result: Any) -> None:
    try:
        audit_log().record(
            who.name,
            who.role.value,
            who.via,
            name,
            target=target,
            params=_audit_params(),
            addr=client_addr(),
            ok=ok,
            status=status,
            result=result if isinstance(result, dict) else {"message": result},
            token=who.token_id,
        )
    except redis.RedisError as exc:  # the action's outcome is answered all the same
        logger.warning("monitor: cannot write the audit log (%s): %s", name, exc)


# -- what the page needs to know -------------------------------------------------------
def page_config() -> dict[str, Any]:
    """Keys of the page's config JSON about the caller (see monitor/web/pages.py)."""
    who = principal()
    refusal = actions_refusal()
    return {
        "user": who.as_dict() if who.authenticated else None,
        "users_configured": users_configured(),
        "can_act": refusal is None and who.authenticated and who.allows(Role.OPERATOR),
        "actions_refusal": refusal,
        "csrf_token": generate_csrf(),
        "hide_args": _ext().settings.hide_args_from_viewers and not who.allows(Role.OPERATOR),
    }


def may_read() -> bool:
    """May this caller read at all (the Socket.IO connect handler asks)?"""
    try:
        return principal().authenticated or not users_configured()
    except (Denied, redis.RedisError):
        return False


def can_see_args() -> bool:
    """False for a viewer when MONITOR_HIDE_ARGS_FROM_VIEWERS is on."""
    if not _ext().settings.hide_args_from_viewers or not users_configured():
        return True
    return principal().allows(Role.OPERATOR)


# -- login and logout (routes on the pages' blueprint) -----------------------------------
def _safe_next(value: Any) -> str:
    prefix = _ext().url_prefix or ""
    if (
        isinstance(value, str)
        and value.startswith("/")
        and not value.startswith("//")
        and "\\" not in value
        and len(value) < 2000
    ):
        return value
    return prefix + "/"


def login() -> Any:
    """GET: the form. POST: name + password (throttled per name and address)."""
    error = None
    status = 200
    name = ""
    next_url = _safe_next(request.values.get("next"))
    if request.method == "POST":
        name = request.form.get("name", "")[:200]
        try:
            validate_csrf(request.form.get("csrf_token"))
        except (ValidationError, CSRFError):
            error, status = "The form expired; please try again.", 400
        else:
            try:
                found = auth_store().login(
                    name, request.form.get("password", ""), client_addr(), via="session"
                )
            except TooManyAttempts as exc:
                error, status = (
                    f"Too many failed logins; try again in {int(exc.retry_after) + 1} s.",
                    429,
                )
            else:
                if found is not None:
                    login_session(found)
                    return redirect(next_url)
                error, status = "Wrong user name or password.", 401
    html = render_template(
        "monitor/login.html",
        error=error,
        next=next_url,
        name=name,
        csrf_token=generate_csrf(),
        title="Log in",
    )
    return Response(html, status=status, mimetype="text/html")


def logout() -> Any:
    try:
        validate_csrf(request.headers.get(CSRF_HEADER) or request.form.get("csrf_token"))
    except (ValidationError, CSRFError):
        return denied_response(Denied("CSRF check failed", 403))
    session.pop(SESSION_KEY, None)
    return redirect(url_for("monitor.login"))


def me() -> Any:
    """GET /api/v1/me: who you are, whether you may act, your CSRF token."""
    config = page_config()
    return jsonify({k: config[k] for k in ("user", "can_act", "actions_refusal", "csrf_token")})


def register_me(blueprint: Blueprint) -> None:
    blueprint.add_url_rule("/me", "me", me, methods=["GET"])


def register_login(blueprint: Blueprint) -> None:
    blueprint.add_url_rule("/login", "login", login, methods=["GET", "POST"])
    blueprint.add_url_rule("/logout", "logout", logout, methods=["POST"])


class _SessionInterface(SecureCookieSessionInterface):
    """The standalone server's session cookie: Secure whenever the request came
    over HTTPS (behind a TLS-terminating proxy: with X-Forwarded-Proto trusted
    through werkzeug's ProxyFix, which `serve` does not install by default)."""

    def get_cookie_secure(self, app: Any) -> bool:
        return bool(app.config.get("SESSION_COOKIE_SECURE")) or request.is_secure


def configure_app(flask_app: Any, ext: Any, standalone: bool) -> None:
    """Session and cookie settings; a host app's own choices are kept."""
    config = flask_app.config
    if not flask_app.secret_key:
        flask_app.secret_key = ext.auth.secret_key()
    config.setdefault("SESSION_COOKIE_SAMESITE", "Lax")
    if config.get("SESSION_COOKIE_SAMESITE") is None:
        config["SESSION_COOKIE_SAMESITE"] = "Lax"
    config["SESSION_COOKIE_HTTPONLY"] = True
    # Flask-WTF's CSRF tokens are checked by `action` and the login form only.
    config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)
    config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # bound to the session, which expires
    if standalone:
        flask_app.permanent_session_lifetime = ext.settings.session_lifetime
        flask_app.session_interface = _SessionInterface()
