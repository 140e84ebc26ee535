"""Users, tokens, roles, login throttling, Flower's basic auth and the trusted header,
against the real Redis (each test has its own prefix). Hashing is real scrypt (about
0.4 s here), so tests hash only where the behaviour needs it."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from werkzeug.datastructures import Headers

from monitor import auth
from monitor.auth import (
    ANONYMOUS,
    AuthError,
    AuthStore,
    Principal,
    Role,
    TooManyAttempts,
    UnknownUser,
    UserExists,
    default_allowed_hosts,
    header_principal,
    host_allowed,
)
from monitor.config import ConfigError, Settings

PASSWORD = "correct horse battery"
HUGE = "x" * 10_000_000


@pytest.fixture
def auth_store(store, settings):
    return AuthStore(store.redis, store.keys, settings)


@pytest.fixture
def hashes(monkeypatch):
    """Counts scrypt verifications (the real function still runs)."""
    calls = []
    real = auth.check_password_hash

    def counting(stored, password):
        calls.append(stored)
        return real(stored, password)

    monkeypatch.setattr(auth, "check_password_hash", counting)
    return calls


# -- roles ---------------------------------------------------------------------------


def test_roles_are_ordered_and_parsed_strictly():
    assert Role.VIEWER < Role.OPERATOR < Role.ADMIN
    assert Role.ADMIN >= Role.OPERATOR and not Role.VIEWER >= Role.OPERATOR
    assert max(Role) is Role.ADMIN and min(Role.ADMIN, Role.VIEWER) is Role.VIEWER
    assert Role.OPERATOR.allows(Role.VIEWER) and Role.OPERATOR.allows("operator")
    assert not Role.OPERATOR.allows("admin")
    assert Role.parse(" Admin ") is Role.ADMIN and str(Role.ADMIN) == "admin"
    # by rank, not alphabetically, with a role name on either side
    assert Role.ADMIN >= "operator" and "operator" <= Role.ADMIN and "admin" > Role.OPERATOR
    assert not Role.VIEWER > "operator" and Role.OPERATOR == "operator"
    with pytest.raises(ValueError):
        Role.ADMIN > "root"  # noqa: B015
    with pytest.raises(ValueError):
        Role.ADMIN < 3  # noqa: B015
    for bad in ("root", "", None, 5, ["admin"], HUGE, "ädmin"):
        with pytest.raises(ValueError, match="unknown role") as info:
            Role.parse(bad)
        assert len(str(info.value)) < 200  # a huge value is not echoed back
    assert Principal("a", Role.OPERATOR, "session").allows(Role.VIEWER)
    assert not ANONYMOUS.authenticated and not ANONYMOUS.allows(Role.OPERATOR)
    assert Principal("a", Role.ADMIN, "token", "abc").as_dict() == {
        "name": "a",
        "role": "admin",
        "via": "token",
    }


# -- users -----------------------------------------------------------------------------


def test_user_lifecycle(auth_store, store, hashes):
    auth_store.add_user("alice", PASSWORD, "operator")
    raw = json.loads(store.redis.hget(store.keys.auth_users, "alice"))
    assert raw["role"] == "operator" and raw["password"].startswith("scrypt:")
    assert PASSWORD not in json.dumps(raw)

    rows = auth_store.list_users()
    assert [(r["name"], r["role"]) for r in rows] == [("alice", "operator")]
    assert "scrypt" not in json.dumps(rows) and set(rows[0]) == {"name", "role", "created"}

    assert auth_store.verify_password("alice", PASSWORD) == Principal(
        "alice", Role.OPERATOR, "basic"
    )
    assert auth_store.verify_password("alice", PASSWORD, via="session").via == "session"
    assert auth_store.verify_password("alice", PASSWORD + "!") is None
    assert auth_store.verify_password("Alice", PASSWORD) is None  # names are case-sensitive
    # a verified pair is remembered: one scrypt for the three right-password checks
    assert len(hashes) == 1 + 1 + 1  # alice ok, alice wrong, Alice (dummy)

    auth_store.set_role("alice", Role.ADMIN)
    assert auth_store.verify_password("alice", PASSWORD).role is Role.ADMIN

    auth_store.set_password("alice", "a new password")
    assert auth_store.verify_password("alice", PASSWORD) is None  # the remembered pair is stale
    assert auth_store.verify_password("alice", "a new password").role is Role.ADMIN

    assert auth_store.remove_user("alice") == []
    assert auth_store.verify_password("alice", "a new password") is None
    assert auth_store.remove_user("alice") is None
    assert auth_store.list_users() == []
    with pytest.raises(UnknownUser):
        auth_store.set_role("alice", "viewer")
    with pytest.raises(UnknownUser):
        auth_store.set_password("alice", PASSWORD)


def test_bad_users_are_refused_before_anything_is_stored(auth_store, store):
    for name in ("", " alice", "a" * 129, "ålice", "alice\n", "a:b", "a b", None, 5, HUGE):
        with pytest.raises(AuthError, match="invalid name"):
            auth_store.add_user(name, PASSWORD)
    for password in ("short", "é" * 600, HUGE, "abc\udcffdefgh", None, b"bytes-password", 12345678):
        with pytest.raises(AuthError, match="password") as info:
            auth_store.add_user("bob", password)
        assert "abc" not in str(info.value)  # a password is never echoed
    with pytest.raises(ValueError, match="unknown role"):
        auth_store.add_user("bob", PASSWORD, "root")
    with pytest.raises(ValueError, match="unknown role"):
        auth_store.set_role("bob", "superuser")
    assert not store.redis.exists(store.keys.auth_users)

    auth_store.add_user("bob", "ünïcødé pässwörd ✓")
    with pytest.raises(UserExists):
        auth_store.add_user("bob", PASSWORD, "admin")
    assert auth_store.get_user("bob")["role"] == "viewer"  # the default, unchanged
    assert auth_store.verify_password("bob", "ünïcødé pässwörd ✓").role is Role.VIEWER
    assert auth_store.verify_password("bob", "unicode passwort") is None


def test_hostile_credentials_cost_no_hash(auth_store, hashes):
    for name, password in [
        ("bob", HUGE),  # scrypt never sees a 10 MB password
        ("bob", "x" * 1025),
        ("bob", "\udcff" * 10),
        ("bob", None),
        ("bob", ["pw"]),
        ("bob", ""),
        (HUGE, PASSWORD),
        (None, PASSWORD),
        ("ålice", PASSWORD),
        ({"name": "x"}, PASSWORD),
    ]:
        assert auth_store.verify_password(name, password) is None
    assert hashes == []


def test_unknown_and_known_users_cost_one_hash_each(auth_store, hashes):
    auth_store.add_user("carol", PASSWORD)
    assert auth_store.verify_password("carol", "wrong password") is None
    assert auth_store.verify_password("nobody", "wrong password") is None
    # one scrypt check each: a wrong name takes the time of a wrong password
    assert len(hashes) == 2
    assert hashes[0].startswith("scrypt:") and hashes[1].startswith("scrypt:")
    assert hashes[0] != hashes[1]  # the unknown name was checked against the dummy hash


def test_corrupt_records_in_redis_are_refused(auth_store, store):
    store.redis.hset(store.keys.auth_users, "mallory", "not json")
    store.redis.hset(store.keys.auth_users, "eve", json.dumps({"role": "god", "password": 5}))
    store.redis.hset(store.keys.auth_tokens, "0123456789ab", "[1, 2]")
    assert auth_store.verify_password("mallory", PASSWORD) is None
    assert auth_store.verify_password("eve", PASSWORD) is None
    assert auth_store.verify_token("cm_0123456789ab_" + "A" * 32) is None
    rows = {row["name"]: row for row in auth_store.list_users()}
    assert rows["mallory"]["role"] is None and rows["eve"]["role"] is None
    assert auth_store.list_tokens()[0]["name"] is None
    with pytest.raises(AuthError, match="corrupt"):
        auth_store.set_role("mallory", "viewer")


# -- tokens ----------------------------------------------------------------------------


def test_token_lifecycle(auth_store, store):
    text = auth_store.create_token("ci", Role.OPERATOR)
    match = re.fullmatch(r"cm_([0-9a-f]{12})_([A-Za-z0-9_-]{32})", text)
    assert match
    token_id, secret = match.groups()
    stored = json.loads(store.redis.hget(store.keys.auth_tokens, token_id))
    assert stored["secret"] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in json.dumps(stored)

    assert auth_store.verify_token(text) == Principal("ci", Role.OPERATOR, "token", token_id)
    rows = auth_store.list_tokens()
    assert [(r["id"], r["name"], r["role"], r["user"]) for r in rows] == [
        (token_id, "ci", "operator", None)
    ]
    assert secret not in json.dumps(rows) and stored["secret"] not in json.dumps(rows)

    flipped = text[:-1] + ("A" if text[-1] != "A" else "B")
    assert auth_store.verify_token(flipped) is None
    assert auth_store.verify_token(f"cm_{'0' * 12}_{secret}") is None  # unknown id

    second = auth_store.create_token("ci", "viewer")  # names may repeat: rotation
    other = auth_store.create_token("grafana")
    assert auth_store.revoke_token(token_id) == [token_id]
    assert auth_store.verify_token(text) is None
    assert auth_store.verify_token(second).role is Role.VIEWER
    assert auth_store.revoke_token("ci") == [second.split("_")[1]]
    assert auth_store.verify_token(second) is None
    assert auth_store.revoke_token("ci") == [] and auth_store.revoke_token(None) == []
    assert auth_store.verify_token(other) == Principal(
        "grafana", Role.VIEWER, "token", other.split("_")[1]
    )


def test_hostile_tokens_are_refused_unparsed(auth_store):
    valid = auth_store.create_token("ci", "operator")
    for text in (
        None,
        5,
        b"bytes",
        "",
        HUGE,
        valid + "x",
        valid.upper(),
        "Bearer " + valid,
        "cm_" + "é" * 12 + "_" + "A" * 32,
        valid.replace("cm_", "xx_"),
        valid[:20],
        "cm_0123456789ab_" + "A" * 31 + "\n",
    ):
        assert auth_store.verify_token(text) is None
    with pytest.raises(AuthError, match="invalid name"):
        auth_store.create_token("bad name")
    with pytest.raises(ValueError, match="unknown role"):
        auth_store.create_token("ci", "root")


def test_a_token_bound_to_a_user_follows_them(auth_store):
    auth_store.add_user("dave", PASSWORD, "operator")
    text = auth_store.create_token("deploy", "operator", user="dave")
    token_id = text.split("_")[1]
    assert auth_store.verify_token(text) == Principal("dave", Role.OPERATOR, "token", token_id)
    with pytest.raises(AuthError, match="above"):
        auth_store.create_token("deploy", "admin", user="dave")
    with pytest.raises(UnknownUser):
        auth_store.create_token("deploy", "viewer", user="nobody")

    auth_store.set_role("dave", "viewer")
    assert auth_store.verify_token(text).role is Role.VIEWER  # at most the user's role
    auth_store.set_role("dave", "admin")
    assert auth_store.verify_token(text).role is Role.OPERATOR  # at most the token's

    assert auth_store.remove_user("dave") == [token_id]
    assert auth_store.list_tokens() == []
    auth_store.add_user("dave", PASSWORD, "admin")
    assert auth_store.verify_token(text) is None  # re-adding the name revives nothing


# -- configured or not -------------------------------------------------------------------


def test_users_configured(store, settings):
    plain = AuthStore(store.redis, store.keys, settings)
    assert not plain.users_configured()
    text = plain.create_token("ci")
    assert plain.users_configured()
    plain.revoke_token(text.split("_")[1])
    assert not plain.users_configured()
    plain.add_user("erin", PASSWORD)
    assert plain.users_configured()
    plain.remove_user("erin")
    assert not plain.users_configured()
    for extra in ({"basic_auth": "flower:secret"}, {"auth_header": "X-Forwarded-User"}):
        configured = Settings.from_env(
            {}, redis_url=settings.redis_url, prefix=settings.prefix, **extra
        )
        assert AuthStore(store.redis, store.keys, configured).users_configured()


def test_secret_key_is_generated_once_and_shared(store, settings):
    first = AuthStore(store.redis, store.keys, settings).secret_key()
    second = AuthStore(store.redis, store.keys, settings).secret_key()
    assert first == second and len(first) >= 32
    given = settings.replace(secret_key=auth.Secret("a configured key, long enough"))
    assert AuthStore(store.redis, store.keys, given).secret_key() == "a configured key, long enough"
    assert "long enough" not in repr(given)
    with pytest.raises(ConfigError, match="MONITOR_SECRET_KEY"):
        Settings.from_env({"MONITOR_SECRET_KEY": "short"})


# -- Flower's basic auth -----------------------------------------------------------------


def test_flower_basic_auth_users_are_operators(store, settings, hashes):
    configured = Settings.from_env(
        {"MONITOR_BASIC_AUTH": "flower:flowerpw, ops:p:w:x"},
        redis_url=settings.redis_url,
        prefix=settings.prefix,
    )
    assert auth.basic_auth_users(configured) == {"flower": "flowerpw", "ops": "p:w:x"}
    assert "flowerpw" not in repr(configured) and "p:w:x" not in repr(configured)
    store_ = AuthStore(store.redis, store.keys, configured)
    assert store_.verify_password("ops", "p:w:x") == Principal("ops", Role.OPERATOR, "basic")
    assert len(hashes) == 1  # the dummy hash: a basic-auth name costs what a stored one does
    assert store_.verify_password("ops", "p:w:x", via="session").via == "session"
    assert len(hashes) == 1  # a verified pair is remembered (HTTP Basic on every request)
    assert store_.verify_password("ops", "p:w:") is None
    assert store_.verify_password("flower", "flowerpw" * 200) is None
    # a stored user of the same name wins over the setting
    store_.add_user("flower", PASSWORD, "viewer")
    assert store_.verify_password("flower", "flowerpw") is None
    assert store_.verify_password("flower", PASSWORD).role is Role.VIEWER


@pytest.mark.parametrize(
    "value",
    [
        "alice",
        "alice:",
        ":topsecret",
        "a:topsecret,a:topsecret2",
        "a b:topsecret",
        "a:" + "x" * 1025,
    ],
)
def test_bad_basic_auth_fails_at_start_up_without_showing_passwords(value):
    with pytest.raises(ConfigError, match="MONITOR_BASIC_AUTH") as info:
        Settings.from_env({"MONITOR_BASIC_AUTH": value})
    assert "topsecret" not in str(info.value) and "xxxx" not in str(info.value)


# -- the trusted header -----------------------------------------------------------------


def _header_settings(roles: str | None = None, header: str | None = "X-Forwarded-User"):
    environ = {"MONITOR_AUTH_HEADER": header} if header else {}
    if roles is not None:
        environ["MONITOR_AUTH_HEADER_ROLES"] = roles
    return Settings.from_env(environ)


def test_header_principal_maps_roles():
    settings = _header_settings("*:viewer,alice:admin,*@ops.example.com:operator")
    assert settings.auth_header_roles == ("*:viewer", "alice:admin", "*@ops.example.com:operator")

    def who(value, headers_type=dict):
        headers = headers_type({"X-Forwarded-User": value}) if value is not None else {}
        return header_principal(settings, headers)

    assert who("alice") == Principal("alice", Role.ADMIN, "header")  # exact beats patterns
    assert who(" ALICE ").role is Role.ADMIN  # identity providers differ in case
    assert who("bob@ops.example.com").role is Role.VIEWER  # the first pattern wins
    assert who("carol", Headers).role is Role.VIEWER
    lowered = header_principal(settings, {"x-forwarded-user": "alice"})
    assert lowered.role is Role.ADMIN  # header names are case-insensitive
    for hostile in ("", "a" * 10_000, "alice\nadmin", "ålice", "a b", ["alice"], 5):
        assert who(hostile) is None
    assert who(None) is None

    ordered = _header_settings("alice:admin,*@ops.example.com:operator")
    assert header_principal(ordered, {"X-Forwarded-User": "bob@ops.example.com"}).role == "operator"
    assert header_principal(ordered, {"X-Forwarded-User": "carol"}) is None  # no match: anonymous
    off = _header_settings("*:admin", header=None)
    assert header_principal(off, {"X-Forwarded-User": "alice"}) is None
    default = _header_settings()
    assert header_principal(default, {"X-Forwarded-User": "alice"}).role is Role.VIEWER


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MONITOR_AUTH_HEADER_ROLES", "alice:root"),
        ("MONITOR_AUTH_HEADER_ROLES", "alice"),
        ("MONITOR_AUTH_HEADER_ROLES", "a b:viewer"),
        ("MONITOR_AUTH_HEADER", "X Forwarded User"),
        ("MONITOR_AUTH_HEADER", "X-Ünicode"),
        ("MONITOR_ALLOWED_HOSTS", "example.com/path"),
        ("MONITOR_AUDIT_MAX_AGE", "nan"),
        ("MONITOR_AUDIT_MAX_AGE", "inf"),
        ("MONITOR_AUDIT_MAX_ENTRIES", "0"),
        ("MONITOR_AUDIT_MAX_ENTRIES", "1e999"),
        ("MONITOR_SESSION_LIFETIME", "-1"),
        ("MONITOR_READ_ONLY", "maybe"),
        ("MONITOR_HIDE_ARGS_FROM_VIEWERS", "2"),
    ],
)
def test_bad_auth_settings_fail_naming_the_variable(variable, value):
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: value})


def test_auth_settings_parse():
    settings = Settings.from_env(
        {
            "MONITOR_READ_ONLY": "yes",
            "MONITOR_HIDE_ARGS_FROM_VIEWERS": "1",
            "MONITOR_AUDIT_MAX_ENTRIES": "500",
            "MONITOR_AUDIT_MAX_AGE": "3600",
            "MONITOR_SESSION_LIFETIME": "600",
            "MONITOR_ALLOWED_HOSTS": "Monitor.Example.com, *.example.org,[::1]",
        }
    )
    assert settings.read_only and settings.hide_args_from_viewers
    assert (settings.audit_max_entries, settings.audit_max_age) == (500, 3600.0)
    assert settings.session_lifetime == 600.0
    assert settings.allowed_hosts == ("monitor.example.com", "*.example.org", "[::1]")
    defaults = Settings()
    assert not defaults.read_only and defaults.basic_auth is None and defaults.auth_header is None


# -- Host allow-list ----------------------------------------------------------------------


def test_host_allowed():
    allowed = ("monitor.example.com", "*.example.org", "127.0.0.1", "[::1]")
    for host in (
        "monitor.example.com",
        "MONITOR.example.com:5555",
        "monitor.example.com.",
        "a.example.org",
        "a.b.example.org:443",
        "127.0.0.1:5555",
        "[::1]:5555",
        "[::1]",
    ):
        assert host_allowed(host, allowed), host
    for host in (
        "example.org",  # *. means subdomains only
        "evil.com",
        "monitor.example.com.evil.com",
        "evilexample.org",
        "127.0.0.1:port",
        "[::1",
        "",
        None,
        5,
        "a" * 10_000,
        "monitor.example.com:99999999",
    ):
        assert not host_allowed(host, allowed), host
    assert host_allowed("anything:1", ("*",))
    local = default_allowed_hosts(Settings())
    assert {"localhost", "127.0.0.1", "::1"} <= set(local)
    assert "10.0.0.5" in default_allowed_hosts(Settings(host="10.0.0.5"))
    assert default_allowed_hosts(Settings(allowed_hosts=("a.example",))) == ("a.example",)


# -- failed logins -------------------------------------------------------------------------


def test_failed_logins_are_limited_per_user_and_per_address(store, settings, hashes):
    limited = AuthStore(store.redis, store.keys, settings, max_user_failures=3, max_addr_failures=5)
    limited.add_user("frank", PASSWORD, "operator")
    assert limited.login("frank", "wrong password", "10.0.0.1") is None  # counted
    for _ in range(2):
        limited.record_failure("frank", "10.0.0.1")
    hashes.clear()
    with pytest.raises(TooManyAttempts) as info:
        limited.login("frank", PASSWORD, "10.0.0.2")  # the right password, too late
    assert 0 < info.value.retry_after <= 900
    assert hashes == []  # refused before any hashing
    assert not limited.allowed("frank", None) and limited.retry_after("frank", None) > 0

    # the address 10.0.0.1 has 3 failures of 5: two more names, then every name is refused
    assert limited.allowed("grace", "10.0.0.1")
    limited.record_failure("grace", "10.0.0.1")
    limited.record_failure("heidi", "10.0.0.1")
    assert not limited.allowed("ivan", "10.0.0.1")
    assert limited.allowed("ivan", "10.0.0.3")
    for key in store.redis.scan_iter(store.keys.auth_fail_user("*")):
        assert 0 < store.redis.ttl(key) <= 900

    # a success clears the user's count, not the address's
    store.redis.delete(store.keys.auth_fail_user("frank"))
    assert limited.login("frank", PASSWORD, "10.0.0.3", via="basic").via == "basic"
    limited.record_failure("frank", "10.0.0.3")
    assert limited.login("frank", PASSWORD, "10.0.0.3") is not None
    assert store.redis.get(store.keys.auth_fail_user("frank")) is None
    assert store.redis.get(store.keys.auth_fail_addr("10.0.0.3")) == "1"


def test_hostile_login_names_and_addresses_keep_keys_short(auth_store, store):
    for name, addr in [
        (HUGE, "10.0.0.1"),
        ("bob", HUGE),
        (None, None),
        (["x"], "::ffff:10.0.0.1"),
        ("ålice", "not an address\r\n"),
    ]:
        auth_store.record_failure(name, addr)
        assert auth_store.retry_after(name, addr) == 0.0
    keys = list(store.redis.scan_iter(store.keys.pattern()))
    assert keys and all(len(key) < 120 for key in keys)
