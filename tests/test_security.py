"""Authentication, authorisation, CSRF, headers and the Host allow-list of the web
tier (monitor/web/security.py), against the real Redis with a Flask test client.

The actions themselves (revoke, retry, pool ...) are checked through Celery on a
real worker in tests/test_actions_api.py; here a harmless test action stands in
for them, counting its runs, so that "nothing executes when refused" is exact.
"""

from __future__ import annotations

import base64
import re
import time

import pytest
from flask import Blueprint

from monitor.auth import AuthStore
from monitor.web import create_app, security

PASSWORD = "correct horse battery"


@pytest.fixture
def make_app(settings):
    """An app with a test action at POST /api/v1/test-action/<thing>."""
    apps = []

    def make(**changes):
        app = create_app(settings.replace(**changes), message_queue=None)
        runs = []
        test_bp = Blueprint(f"test_actions_{len(apps)}", __name__)
        security.protect(test_bp)

        @test_bp.post("/test-action/<thing>")
        @security.action("test.poke", target="thing")
        def poke(thing):
            runs.append((thing, security.request_params()))
            return {"poked": thing}

        app.register_blueprint(test_bp, url_prefix="/api/v1")
        app.config["TESTING"] = True
        app.runs = runs
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["monitor"].store.close()


@pytest.fixture
def users(settings, store):
    auth = AuthStore(store.redis, store.keys, settings)
    auth.add_user("olga", PASSWORD, "operator")
    auth.add_user("vic", PASSWORD, "viewer")
    auth.add_user("ada", PASSWORD, "admin")
    return auth


def basic(name, password=PASSWORD):
    raw = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def log_in(client, name, password=PASSWORD):
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))[1]
    return client.post(
        "/login", data={"name": name, "password": password, "csrf_token": token, "next": "/"}
    )


def csrf_of(client):
    return client.get("/api/v1/me").get_json()["csrf_token"]


def test_without_users_reading_is_open_and_actions_say_how_to_enable_them(make_app, store):
    app = make_app()
    client = app.test_client()
    assert client.get("/api/v1/tasks").status_code == 200
    assert client.get("/").status_code == 200
    response = client.post("/api/v1/test-action/x")
    assert response.status_code == 403
    assert "users add" in response.get_json()["error"]
    assert app.runs == []
    entry = security_audit(app)[0]
    assert entry["action"] == "test.poke" and entry["ok"] is False and entry["status"] == 403


def security_audit(app):
    return app.extensions["monitor"].audit.list(limit=50)["entries"]


def test_with_users_everything_needs_a_login(make_app, users):
    app = make_app()
    client = app.test_client()
    assert client.get("/api/v1/tasks").status_code == 401
    assert client.get("/api/tasks").status_code == 401  # Flower's endpoints too
    assert client.get("/metrics").status_code == 401
    page = client.get("/tasks")
    assert page.status_code == 302 and "/login?next=" in page.headers["Location"]
    assert client.get("/static/monitor.css").status_code == 200  # the login page needs it
    assert client.get("/login").status_code == 200


def test_login_session_cookie_flags_logout_and_csrf(make_app, users):
    app = make_app()
    client = app.test_client()
    assert log_in(client, "olga", "wrong password").status_code == 401
    response = log_in(client, "olga")
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert client.get("/api/v1/tasks").status_code == 200
    me = client.get("/api/v1/me").get_json()
    assert me["user"] == {"name": "olga", "role": "operator", "via": "session"}
    assert me["can_act"] is True
    # a session needs the CSRF token to act
    assert client.post("/api/v1/test-action/a").status_code == 403
    ok = client.post("/api/v1/test-action/a", headers={"X-CSRFToken": csrf_of(client)})
    assert ok.status_code == 200 and ok.get_json() == {"poked": "a"}
    assert app.runs == [("a", {})]
    # logout needs it too, then the session is gone
    assert client.post("/logout").status_code == 403
    assert client.post("/logout", headers={"X-CSRFToken": csrf_of(client)}).status_code == 302
    assert client.get("/api/v1/tasks").status_code == 401


def test_authorisation_matrix(make_app, users):
    """Each identity against a read and an action; nothing runs when refused."""
    app = make_app()
    client = app.test_client()
    token = users.create_token("ci", "operator")
    revoked = users.create_token("old", "operator")
    users.revoke_token("old")
    viewer_token = users.create_token("dash", "viewer")
    cases = [
        ("anonymous", {}, 401, 401),
        ("viewer", basic("vic"), 200, 403),
        ("operator", basic("olga"), 200, 200),
        ("admin", basic("ada"), 200, 200),
        ("wrong password", basic("olga", "nope nope nope"), 401, 401),
        ("unknown user", basic("mallory"), 401, 401),
        ("token", {"Authorization": f"Bearer {token}"}, 200, 200),
        ("viewer token", {"Authorization": f"Bearer {viewer_token}"}, 200, 403),
        ("revoked token", {"Authorization": f"Bearer {revoked}"}, 401, 401),
        ("garbage token", {"Authorization": "Bearer x" * 500}, 401, 401),
        ("garbage basic", {"Authorization": "Basic %%%"}, 401, 401),
    ]
    for who, headers, read, act in cases:
        assert client.get("/api/v1/tasks", headers=headers).status_code == read, who
        before = len(app.runs)
        response = client.post("/api/v1/test-action/t", headers=headers)
        assert response.status_code == act, (who, response.get_json())
        assert len(app.runs) == before + (1 if act == 200 else 0), who
    # one audit entry per attempted action, refused ones included
    entries = security_audit(app)
    assert len(entries) == len(cases)
    assert sum(e["ok"] for e in entries) == 3


def test_failed_logins_are_throttled_per_user(make_app, users):
    app = make_app()
    client = app.test_client()
    for _ in range(5):
        assert client.get("/api/v1/tasks", headers=basic("olga", "bad")).status_code == 401
    throttled = client.get("/api/v1/tasks", headers=basic("olga"))
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 0
    assert client.get("/api/v1/tasks", headers=basic("vic")).status_code == 200  # others not


def test_an_expired_session_is_anonymous(make_app, users):
    app = make_app(session_lifetime=1.0)
    client = app.test_client()
    log_in(client, "olga")
    assert client.get("/api/v1/tasks").status_code == 200
    time.sleep(1.2)
    assert client.get("/api/v1/tasks").status_code == 401


def test_a_removed_user_loses_the_session_and_a_role_change_applies(make_app, users):
    app = make_app()
    client = app.test_client()
    log_in(client, "olga")
    users.set_role("olga", "viewer")
    csrf = csrf_of(client)
    assert client.post("/api/v1/test-action/t", headers={"X-CSRFToken": csrf}).status_code == 403
    users.remove_user("olga")
    assert client.get("/api/v1/tasks").status_code == 401


def test_cross_site_writes_are_refused_whatever_the_credentials(make_app, users):
    app = make_app()
    client = app.test_client()
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ):
        response = client.post("/api/v1/test-action/t", headers={**basic("olga"), **headers})
        assert response.status_code == 403, headers
    assert app.runs == []
    same = client.post(
        "/api/v1/test-action/t", headers={**basic("olga"), "Origin": "http://localhost"}
    )
    assert same.status_code == 200
    # refused before the view runs, and audited all the same
    assert [e["ok"] for e in security_audit(app)] == [True, False, False, False]


def test_read_only_refuses_every_action(make_app, users):
    app = make_app(read_only=True)
    response = app.test_client().post("/api/v1/test-action/t", headers=basic("olga"))
    assert response.status_code == 403 and "read-only" in response.get_json()["error"]
    assert app.runs == []


def test_security_headers_on_pages_and_api(make_app):
    client = make_app().test_client()
    for path in ("/", "/tasks", "/api/v1/tasks", "/api/tasks", "/login"):
        headers = client.get(path).headers
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"
    assert client.get("/api/v1/tasks").headers["Cache-Control"] == "no-store"


def test_unknown_host_is_refused(make_app):
    client = make_app().test_client()
    assert client.get("/api/v1/tasks", headers={"Host": "localhost:5555"}).status_code == 200
    assert client.get("/api/v1/tasks", headers={"Host": "127.0.0.1:5555"}).status_code == 200
    refused = client.get("/api/v1/tasks", headers={"Host": "rebind.attacker.example"})
    assert refused.status_code == 400 and "MONITOR_ALLOWED_HOSTS" in refused.get_json()["error"]
    allowed = make_app(allowed_hosts=("monitor.example.com",)).test_client()
    assert allowed.get("/", headers={"Host": "monitor.example.com"}).status_code == 200


def test_trusted_header_names_the_user_with_a_role_map(make_app, store):
    app = make_app(auth_header="X-Forwarded-User", auth_header_roles=("olga:operator", "*:viewer"))
    client = app.test_client()
    assert client.get("/api/v1/tasks").status_code == 401  # the header is the login now
    headers = {"X-Forwarded-User": "olga"}
    assert client.post("/api/v1/test-action/h", headers=headers).status_code == 200
    viewer = {"X-Forwarded-User": "someone"}
    assert client.get("/api/v1/tasks", headers=viewer).status_code == 200
    assert client.post("/api/v1/test-action/h", headers=viewer).status_code == 403


def test_socketio_connect_needs_the_same_session(make_app, users):
    app = make_app()
    ext = app.extensions["monitor"]
    anonymous = ext.socketio.test_client(app, flask_test_client=app.test_client())
    assert not anonymous.is_connected()
    client = app.test_client()
    log_in(client, "vic")
    viewer = ext.socketio.test_client(app, flask_test_client=client)
    assert viewer.is_connected()
    viewer.disconnect()


def test_serve_warns_when_it_binds_beyond_loopback_without_users(make_app, caplog, store):
    from monitor.web.server import warn_if_exposed

    app = make_app()
    ext = app.extensions["monitor"]
    assert not warn_if_exposed(ext.settings.replace(host="127.0.0.1"), ext)
    assert warn_if_exposed(ext.settings.replace(host="0.0.0.0"), ext)
    assert "no user configured" in caplog.text
    AuthStore(store.redis, store.keys, ext.settings).add_user("olga", PASSWORD, "operator")
    ext.users_cache = None
    assert not warn_if_exposed(ext.settings.replace(host="0.0.0.0"), ext)


def test_inspect_broadcasts_need_an_operator_once_users_exist(make_app, users):
    client = make_app(broker_url="redis://127.0.0.1:1/0").test_client()
    refused = client.get("/api/workers?refresh=1", headers=basic("vic"))
    assert refused.status_code == 403 and "operator" in refused.get_json()["error"]
    assert client.get("/api/workers", headers=basic("vic")).status_code == 200
    # an operator gets through to the broadcast (here: a broker that is not there)
    assert client.get("/api/workers?refresh=1", headers=basic("olga")).status_code == 503


def test_viewers_do_not_see_arguments_when_hidden_and_nobody_sees_the_body(make_app, users):
    from monitor.model import TaskEvent

    app = make_app(hide_args_from_viewers=True)
    store = app.extensions["monitor"].store
    fields = {"name": "n", "args": "('card-4111',)", "args_json": ["card-4111"], "body": "Wy"}
    store.apply([TaskEvent("h1", "PENDING", time.time(), "signal", "p", fields)])
    client = app.test_client()
    for path in ("/api/v1/tasks/h1", "/api/v1/tasks", "/api/task/info/h1", "/api/tasks"):
        seen = client.get(path, headers=basic("vic")).get_data(as_text=True)
        assert "card-4111" not in seen and '"body"' not in seen, path
        full = client.get(path, headers=basic("olga")).get_data(as_text=True)
        assert "card-4111" in full and '"body"' not in full, path
