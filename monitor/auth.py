"""Who may do what: roles, users, API tokens, login throttling, Flower's basic auth
and a proxy's trusted header. No Flask here: the web tier builds on these.

This module owns the vocabulary of authorisation (the roles, the rules for a user
or token name and a password, the token format) and every read and write of the
``{p}:auth:*`` keys (spelled in :mod:`monitor.keys`). Users and tokens live in the
monitor's Redis so every ``serve`` process agrees; passwords are stored as
werkzeug scrypt hashes, tokens as the SHA-256 of their secret (a token is 192
random bits: a fast hash is enough, and verifying one costs microseconds).

Everything a request can reach is bounded: a name is at most 128 characters of
``[A-Za-z0-9_.@+-]``, a password at most 1024 UTF-8 bytes (scrypt's cost must not
grow with a hostile input), a token is checked against its fixed format before
Redis is asked, and values read back from Redis are treated as data.
"""

from __future__ import annotations

import collections
import fnmatch
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Any

from werkzeug.security import check_password_hash, generate_password_hash

from .config import Secret
from .keys import Keys

if TYPE_CHECKING:
    import redis

    from .config import Settings

logger = logging.getLogger(__name__)

MAX_NAME_LENGTH = 128
MIN_PASSWORD_LENGTH = 8  # characters, for passwords we store; Flower's basic auth is as given
MAX_PASSWORD_BYTES = 1024
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.@+-]{{0,{MAX_NAME_LENGTH - 1}}}")
#: A name pattern of auth_header_roles: a name, or a glob with * and ?.
_NAME_PATTERN = re.compile(rf"[A-Za-z0-9_.@+*?-]{{1,{MAX_NAME_LENGTH}}}")

TOKEN_PREFIX = "cm"
_TOKEN = re.compile(r"cm_([0-9a-f]{12})_([A-Za-z0-9_-]{32})")
_TOKEN_ID = re.compile(r"[0-9a-f]{12}")
_TOKEN_MAX_LENGTH = 64  # the format is 48 characters; anything longer is refused unparsed

PASSWORD_METHOD = "scrypt"


class Role(StrEnum):
    """viewer < operator < admin; compare with ``<``/``>=`` or :meth:`allows`."""

    VIEWER = "viewer"  # reads
    OPERATOR = "operator"  # reads and acts (revoke, retry, pool, queues ...)
    ADMIN = "admin"  # operator, plus users and tokens

    @property
    def rank(self) -> int:
        return _RANKS[self.value]

    def allows(self, needed: Role | str) -> bool:
        """Does this role include ``needed``?"""
        return self.rank >= Role.parse(needed).rank

    @classmethod
    def parse(cls, value: Any) -> Role:
        """A Role from a Role or its name (any case); ValueError otherwise."""
        if isinstance(value, Role):
            return value
        if isinstance(value, str) and value.strip().lower() in _RANKS:
            return cls(value.strip().lower())
        raise ValueError(f"unknown role {_short(value)}: expected one of {', '.join(_RANKS)}")

    # Ranks, not the alphabet; a role name on either side is parsed (an unknown one
    # raises) so ``principal.role >= "operator"`` cannot silently compare strings.
    def _other(self, other: object) -> int:
        return Role.parse(other).rank

    def __lt__(self, other: object) -> bool:
        return self.rank < self._other(other)

    def __le__(self, other: object) -> bool:
        return self.rank <= self._other(other)

    def __gt__(self, other: object) -> bool:
        return self.rank > self._other(other)

    def __ge__(self, other: object) -> bool:
        return self.rank >= self._other(other)


_RANKS = {"viewer": 0, "operator": 1, "admin": 2}

#: How a principal proved who it is (the audit log's ``via``).
VIA = ("session", "basic", "token", "header", "anonymous", "cli")


@dataclass(frozen=True)
class Principal:
    """Who is asking: ``name``, ``role`` and ``via`` (one of :data:`VIA`).

    ``token_id`` is set when a token authenticated the request (its ``name`` is the
    token's name, or the user it is bound to).
    """

    name: str
    role: Role
    via: str
    token_id: str | None = None

    @property
    def authenticated(self) -> bool:
        return self.via != "anonymous"

    def allows(self, needed: Role | str) -> bool:
        return self.role.allows(needed)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role.value, "via": self.via}


#: Whoever did not authenticate. Viewer rights: the web tier decides whether
#: anonymous reads are allowed (they are while no user is configured).
ANONYMOUS = Principal("anonymous", Role.VIEWER, "anonymous")


class AuthError(ValueError):
    """An invalid name, password, role or token specification; the message says why."""


class UnknownUser(LookupError):
    """No such user."""


class UserExists(AuthError):
    """A user of that name exists already."""


class TooManyAttempts(Exception):
    """Failed logins for this user or address hit the limit; retry after ``retry_after`` s."""

    def __init__(self, retry_after: float):
        super().__init__(f"too many failed logins: retry in {retry_after:.0f} s")
        self.retry_after = retry_after


# -- rules: names, passwords, roles ----------------------------------------------


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else f"<{type(value).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."


def valid_name(name: Any) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def check_name(name: Any) -> str:
    """``name`` if it is a valid user or token name, else AuthError."""
    if not valid_name(name):
        raise AuthError(
            f"invalid name {_short(name)}: 1 to {MAX_NAME_LENGTH} characters among "
            "A-Z a-z 0-9 _ . @ + -, starting with a letter or digit"
        )
    return name


def _password_bytes(password: Any) -> bytes | None:
    """UTF-8 bytes of an acceptable password, or None (wrong type, too long, unencodable)."""
    if not isinstance(password, str) or len(password) > MAX_PASSWORD_BYTES:
        return None
    try:
        raw = password.encode("utf-8")  # lone surrogates cannot be hashed: refused
    except UnicodeEncodeError:
        return None
    return raw if 0 < len(raw) <= MAX_PASSWORD_BYTES else None


def check_password(password: Any) -> str:
    """``password`` if it may be stored, else AuthError (the message never shows it)."""
    if not isinstance(password, str):
        raise AuthError("the password must be text")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AuthError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if _password_bytes(password) is None:
        raise AuthError(f"the password must be valid text of at most {MAX_PASSWORD_BYTES} bytes")
    return password


@cache
def _dummy_hash() -> str:
    # Checked for unknown users, so a wrong name costs the same time as a wrong password.
    return generate_password_hash(secrets.token_urlsafe(16), method=PASSWORD_METHOD)


_DUMMY_DIGEST = hashlib.sha256(b"no such token").hexdigest()
_BASIC = "\0basic"  # remembered for a verified basic_auth pair (never a stored hash)


def _sha256(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


# -- settings: Flower's basic auth, the trusted header, the Host allow-list -------


def parse_basic_auth(text: str) -> tuple[tuple[str, Secret], ...]:
    """Flower's ``--basic-auth`` value ``user:password,user2:password2`` (config parser).

    Errors name the entry's position, never its password.
    """
    pairs: list[tuple[str, Secret]] = []
    for position, entry in enumerate(text.split(","), 1):
        name, colon, password = entry.strip().partition(":")
        if not colon or not name or not password:
            raise ValueError(f"entry {position}: expected user:password")
        if len(name) > MAX_NAME_LENGTH or any(ch.isspace() for ch in name):
            raise ValueError(f"entry {position}: invalid user name {_short(name)}")
        if _password_bytes(password) is None:
            raise ValueError(f"entry {position}: password longer than {MAX_PASSWORD_BYTES} bytes")
        if any(name == seen for seen, _ in pairs):
            raise ValueError(f"entry {position}: user {name!r} is listed twice")
        pairs.append((name, Secret(password)))
    return tuple(pairs)


def basic_auth_users(settings: Settings) -> dict[str, str]:
    """Flower-style basic-auth users of ``settings``: name -> password (operators)."""
    return dict(settings.basic_auth or ())


def parse_role_map(text: str) -> tuple[str, ...]:
    """``alice:admin,*@ops.example.com:operator,*:viewer`` (config parser), normalised."""
    entries: list[str] = []
    for position, entry in enumerate(text.split(","), 1):
        entry = entry.strip()
        if not entry:
            continue
        pattern, colon, role = entry.rpartition(":")
        if not colon or not _NAME_PATTERN.fullmatch(pattern):
            raise ValueError(f"entry {position}: expected name:role or pattern:role, got {entry!r}")
        entries.append(f"{pattern}:{Role.parse(role).value}")
    return tuple(entries)


def role_for(name: str, role_map: Iterable[str]) -> Role | None:
    """The role ``role_map`` gives ``name`` (case-insensitive, as identity providers
    differ): an exact entry wins, else the first matching pattern; None when none matches."""
    folded = name.casefold()
    parsed = [entry.rpartition(":")[::2] for entry in role_map]
    for pattern, role in parsed:
        if pattern.casefold() == folded:
            return Role.parse(role)
    for pattern, role in parsed:
        if ("*" in pattern or "?" in pattern) and fnmatch.fnmatchcase(folded, pattern.casefold()):
            return Role.parse(role)
    return None


def _header(headers: Mapping[str, Any], wanted: str) -> Any:
    value = headers.get(wanted)
    if value is None:  # a plain dict is case-sensitive; werkzeug's Headers are not
        lowered = wanted.lower()
        for key, item in headers.items():
            if isinstance(key, str) and key.lower() == lowered:
                return item
    return value


def header_principal(settings: Settings, headers: Mapping[str, Any]) -> Principal | None:
    """The user an authenticating proxy names in ``settings.auth_header``, with the role
    ``settings.auth_header_roles`` gives them; None (anonymous) when the header is off,
    absent, not a valid name, or no entry matches."""
    if not settings.auth_header:
        return None
    value = _header(headers, settings.auth_header)
    if not isinstance(value, str):
        return None
    name = value.strip()
    if not valid_name(name):
        return None
    role = role_for(name, settings.auth_header_roles)
    return None if role is None else Principal(name, role, "header")


_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
_WILDCARD_BINDS = ("", "0.0.0.0", "::")


def default_allowed_hosts(settings: Settings) -> tuple[str, ...]:
    """``settings.allowed_hosts``, or the bound address and localhost names (and this
    machine's host name when bound to every interface)."""
    if settings.allowed_hosts:
        return settings.allowed_hosts
    hosts = [*_LOCAL_HOSTS]
    if settings.host in _WILDCARD_BINDS:
        hosts.append(socket.gethostname().lower())
    else:
        hosts.append(settings.host.lower())
    return tuple(dict.fromkeys(hosts))


def _host_name(host: str) -> str | None:
    """The name part of a Host header (port and IPv6 brackets removed), or None."""
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, port = host[1:].partition("]")
        if not bracket or (port and not re.fullmatch(r":\d{1,5}", port)):
            return None
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
        if not re.fullmatch(r"\d{1,5}", port):
            return None
    else:
        name = host  # no port, or a bare IPv6 address
    name = name.rstrip(".")
    return name or None


def host_allowed(host: Any, allowed: Iterable[str]) -> bool:
    """Is the Host header ``host`` in ``allowed`` (names or addresses, ``*.example.com``
    for subdomains, ``*`` for any)? Ports are ignored; a missing or odd Host is refused."""
    if not isinstance(host, str) or not 0 < len(host) <= 300:
        return False
    name = _host_name(host)
    if name is None:
        return False
    for pattern in allowed:
        pattern = pattern.strip().lower().strip("[]").rstrip(".")
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


# -- the store -----------------------------------------------------------------------

# A write that depends on a read is one script (STYLE.md). The records are JSON
# objects; cjson re-encodes them with another key order, which JSON does not mind.
_SET_FIELD = """
-- KEYS[1] = users hash
-- ARGV[1] = user name, ARGV[2] = record field, ARGV[3] = its new value
-- returns 1 when updated, 0 when there is no such user, -1 for a corrupt record
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local ok, record = pcall(cjson.decode, raw)
if not ok or type(record) ~= 'table' then return -1 end
record[ARGV[2]] = ARGV[3]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
return 1
"""

_REMOVE_USER = """
-- KEYS[1] = users hash, KEYS[2] = tokens hash
-- ARGV[1] = user name
-- returns {1 or 0 (the user existed), ids of the tokens bound to the user, removed too}
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
local reply = {removed}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local ok, token = pcall(cjson.decode, all[i + 1])
  if ok and type(token) == 'table' and token['user'] == ARGV[1] then
    redis.call('HDEL', KEYS[2], all[i])
    reply[#reply + 1] = all[i]
  end
end
return reply
"""

_ADD_TOKEN = """
-- KEYS[1] = tokens hash, KEYS[2] = users hash
-- ARGV[1] = token id, ARGV[2] = token record (JSON), ARGV[3] = bound user name or ''
-- returns 1 when stored, 0 when the id is taken, -1 when the bound user does not exist
if ARGV[3] ~= '' and redis.call('HEXISTS', KEYS[2], ARGV[3]) == 0 then return -1 end
return redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
"""


def _record(raw: Any) -> dict[str, Any] | None:
    """A stored JSON record, or None when missing or not an object (data, not trusted)."""
    if not isinstance(raw, str):
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _stored_role(record: Mapping[str, Any]) -> Role | None:
    try:
        return Role.parse(record.get("role"))
    except ValueError:
        return None


class AuthStore:
    """Users, tokens, failed-login counters and the session key in the monitor's Redis.

    ``client`` must decode responses (``monitor.store.redis_client``). With
    ``settings``, Flower-style ``basic_auth`` users and the trusted header count as
    configured users, and ``basic_auth`` users can sign in (as operators).
    Methods raise ``redis.RedisError`` when Redis is away.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        settings: Settings | None = None,
        *,
        max_user_failures: int = 5,
        max_addr_failures: int = 20,
        failure_window: float = 900.0,
    ):
        self.redis = client
        self.keys = keys
        self.settings = settings
        self.max_user_failures = max_user_failures
        self.max_addr_failures = max_addr_failures
        self.failure_window = failure_window
        self._basic = basic_auth_users(settings) if settings is not None else {}
        self._set_field = client.register_script(_SET_FIELD)
        self._remove_user = client.register_script(_REMOVE_USER)
        self._add_token = client.register_script(_ADD_TOKEN)
        # Verified (name, password) pairs -> the hash they matched, so HTTP Basic on
        # every script request costs one HGET, not one scrypt. Keyed by an HMAC under
        # a per-process key; a changed password (another hash) misses at once.
        self._verified: collections.OrderedDict[bytes, str] = collections.OrderedDict()
        self._verified_key = secrets.token_bytes(32)
        self._verified_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> AuthStore:
        from .store import redis_client

        return cls(redis_client(settings.redis_url), Keys(settings.prefix), settings, **options)

    # -- users -----------------------------------------------------------------
    def add_user(self, name: str, password: str, role: Role | str = Role.VIEWER) -> None:
        """Create a user; AuthError for a bad name, password or role, UserExists."""
        check_name(name)
        role = Role.parse(role)
        hashed = generate_password_hash(check_password(password), method=PASSWORD_METHOD)
        record = {"role": role.value, "password": hashed, "created": time.time()}
        if not self.redis.hsetnx(self.keys.auth_users, name, json.dumps(record)):
            raise UserExists(f"user {name!r} exists")

    def set_password(self, name: str, password: str) -> None:
        """Replace a user's password; UnknownUser when there is no such user."""
        hashed = generate_password_hash(check_password(password), method=PASSWORD_METHOD)
        self._update(name, "password", hashed)

    def set_role(self, name: str, role: Role | str) -> None:
        """Change a user's role (their bound tokens follow); UnknownUser, AuthError."""
        self._update(name, "role", Role.parse(role).value)

    def _update(self, name: str, field: str, value: str) -> None:
        result = self._set_field(keys=[self.keys.auth_users], args=[check_name(name), field, value])
        if result == 0:
            raise UnknownUser(f"no user {name!r}")
        if result < 0:
            raise AuthError(f"the stored record of user {name!r} is corrupt: remove and add it")

    def remove_user(self, name: str) -> list[str] | None:
        """Delete a user and the tokens bound to them (their ids returned); None when
        there was no such user."""
        if not valid_name(name):
            return None
        reply = self._remove_user(keys=[self.keys.auth_users, self.keys.auth_tokens], args=[name])
        return list(reply[1:]) if reply[0] else None

    def get_user(self, name: str) -> dict[str, Any] | None:
        """``{"name", "role", "created"}`` or None (never the hash)."""
        if not valid_name(name):
            return None
        record = _record(self.redis.hget(self.keys.auth_users, name))
        return None if record is None else self._user_row(name, record)

    @staticmethod
    def _user_row(name: str, record: Mapping[str, Any]) -> dict[str, Any]:
        role = _stored_role(record)
        created = record.get("created")
        return {
            "name": name,
            "role": role.value if role else None,
            "created": created if isinstance(created, int | float) else None,
        }

    def list_users(self) -> list[dict[str, Any]]:
        """``[{"name", "role", "created"}]`` sorted by name; never the hashes."""
        users = self.redis.hgetall(self.keys.auth_users)
        rows = [self._user_row(name, _record(raw) or {}) for name, raw in users.items()]
        return sorted(rows, key=lambda row: row["name"])

    def verify_password(self, name: Any, password: Any, *, via: str = "basic") -> Principal | None:
        """The user (or Flower ``basic_auth`` user) if ``password`` is theirs, else None.

        Takes the same time whether or not the user exists (an unknown name checks
        a dummy hash). A stored user wins over a ``basic_auth`` user of the same name.
        A pair verified before costs no hash (HTTP Basic sends it on every request).
        Does not count failures: :meth:`login` does.
        """
        dummy = _dummy_hash()
        raw = _password_bytes(password)
        if raw is None or not valid_name(name):
            return None
        digest = hmac.new(self._verified_key, name.encode() + b"\0" + raw, "sha256").digest()
        record = _record(self.redis.hget(self.keys.auth_users, name))
        stored = record.get("password") if record else None
        if isinstance(stored, str):
            role = _stored_role(record) if record else None
            if role is None:
                logger.warning("user %r has no valid role in Redis: refused", name)
                return None
            if not self._remembered(digest, stored):
                if not check_password_hash(stored, password):
                    return None
                self._remember(digest, stored)
            return Principal(name, role, via)
        basic = self._basic.get(name)
        if basic is not None and self._remembered(digest, _BASIC):
            return Principal(name, Role.OPERATOR, via)
        check_password_hash(dummy, password)
        if basic is not None and hmac.compare_digest(_sha256(basic.encode("utf-8")), _sha256(raw)):
            self._remember(digest, _BASIC)
            return Principal(name, Role.OPERATOR, via)
        return None

    def _remembered(self, digest: bytes, stored: str) -> bool:
        with self._verified_lock:
            return self._verified.get(digest) == stored

    def _remember(self, digest: bytes, stored: str) -> None:
        with self._verified_lock:
            self._verified[digest] = stored
            self._verified.move_to_end(digest)
            while len(self._verified) > 1024:
                self._verified.popitem(last=False)

    # -- tokens ----------------------------------------------------------------
    def create_token(
        self, name: str, role: Role | str = Role.VIEWER, user: str | None = None
    ) -> str:
        """A new API token ``cm_<id>_<secret>``: returned once, stored hashed.

        Bound to ``user``, it acts as that user, with at most their current role,
        and dies with them. AuthError (bad name or role, role above the user's),
        UnknownUser.
        """
        check_name(name)
        role = Role.parse(role)
        if user is not None:
            owner = self.get_user(check_name(user))
            if owner is None:
                raise UnknownUser(f"no user {user!r}")
            if owner["role"] is None or role > Role.parse(owner["role"]):
                raise AuthError(f"role {role} is above user {user!r}'s role {owner['role']}")
        for _ in range(5):  # 48-bit ids: a collision is a freak, retried
            token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
            record = {
                "name": name,
                "role": role.value,
                "secret": hashlib.sha256(secret.encode()).hexdigest(),
                "created": time.time(),
                "user": user,
            }
            stored = self._add_token(
                keys=[self.keys.auth_tokens, self.keys.auth_users],
                args=[token_id, json.dumps(record), user or ""],
            )
            if stored == -1:
                raise UnknownUser(f"no user {user!r}")
            if stored == 1:
                return f"{TOKEN_PREFIX}_{token_id}_{secret}"
        raise RuntimeError("could not allocate a token id")  # pragma: no cover

    def revoke_token(self, id_or_name: str) -> list[str]:
        """Revoke the token with this id, else every token with this name; the ids revoked."""
        if not isinstance(id_or_name, str):
            return []
        if _TOKEN_ID.fullmatch(id_or_name) and self.redis.hdel(self.keys.auth_tokens, id_or_name):
            return [id_or_name]
        ids = [row["id"] for row in self.list_tokens() if row["name"] == id_or_name]
        if ids:
            self.redis.hdel(self.keys.auth_tokens, *ids)
        return ids

    def list_tokens(self) -> list[dict[str, Any]]:
        """``[{"id", "name", "role", "user", "created"}]`` oldest first; never secrets."""
        rows = []
        for token_id, raw in self.redis.hgetall(self.keys.auth_tokens).items():
            record = _record(raw) or {}
            role = _stored_role(record)
            created = record.get("created")
            rows.append(
                {
                    "id": token_id,
                    "name": record.get("name") if isinstance(record.get("name"), str) else None,
                    "role": role.value if role else None,
                    "user": record.get("user") if isinstance(record.get("user"), str) else None,
                    "created": created if isinstance(created, int | float) else None,
                }
            )
        return sorted(rows, key=lambda row: (row["created"] or 0, row["id"]))

    def verify_token(self, text: Any) -> Principal | None:
        """The principal of a valid, unrevoked token (from ``Authorization: Bearer``), else None."""
        if not isinstance(text, str) or len(text) > _TOKEN_MAX_LENGTH:
            return None
        match = _TOKEN.fullmatch(text)
        if match is None:
            return None
        token_id, secret = match.groups()
        digest = hashlib.sha256(secret.encode()).hexdigest()
        record = _record(self.redis.hget(self.keys.auth_tokens, token_id))
        stored = record.get("secret") if record else None
        if not isinstance(stored, str):
            hmac.compare_digest(digest, _DUMMY_DIGEST)
            return None
        if not hmac.compare_digest(digest, stored):
            return None
        role = _stored_role(record) if record else None
        name = record.get("name") if record else None
        if role is None or not isinstance(name, str):
            return None
        user = record.get("user") if record else None
        if user:
            owner = self.get_user(user) if isinstance(user, str) else None
            if owner is None or owner["role"] is None:
                return None  # the user was removed (or is corrupt): the token died with them
            role, name = min(role, Role.parse(owner["role"])), user
        return Principal(name, role, "token", token_id=token_id)

    # -- configuration ---------------------------------------------------------
    def users_configured(self) -> bool:
        """Is any user, token, Flower basic-auth user or trusted header configured?

        While none is, the dashboard stays open and read-only (the issue's rule).
        """
        if self._basic or (self.settings is not None and self.settings.auth_header):
            return True
        return bool(self.redis.exists(self.keys.auth_users, self.keys.auth_tokens))

    def secret_key(self) -> str:
        """The session signing key: ``settings.secret_key``, else one generated once and
        kept in Redis so every serve process signs alike."""
        if self.settings is not None and self.settings.secret_key:
            return str(self.settings.secret_key)
        self.redis.set(self.keys.auth_secret, secrets.token_urlsafe(48), nx=True)
        return self.redis.get(self.keys.auth_secret)

    # -- failed logins ---------------------------------------------------------
    @staticmethod
    def _key_part(value: Any, valid: bool) -> str:
        # Hostile names and addresses become fixed-size digests: keys stay short.
        if valid:
            return value
        text = value if isinstance(value, str) else f"<{type(value).__name__}>"
        return "h:" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:32]

    def _fail_keys(self, name: Any, addr: Any) -> list[tuple[str, int]]:
        """(counter key, limit) for the user name and, when given, the address."""
        user = self._key_part(name, valid_name(name))
        keys = [(self.keys.auth_fail_user(user), self.max_user_failures)]
        if addr is not None:
            try:
                part = str(ipaddress.ip_address(addr))
            except ValueError:
                part = self._key_part(addr, False)
            keys.append((self.keys.auth_fail_addr(part), self.max_addr_failures))
        return keys

    def record_failure(self, name: Any, addr: str | None) -> None:
        """Count a failed login for ``name`` and ``addr`` (fixed window from the first)."""
        window = max(1, round(self.failure_window))
        pipe = self.redis.pipeline(transaction=False)
        for key, _ in self._fail_keys(name, addr):
            pipe.set(key, 0, ex=window, nx=True)  # starts the window (works before Redis 7)
            pipe.incr(key)
        pipe.execute()

    def retry_after(self, name: Any, addr: str | None) -> float:
        """Seconds before ``name`` may try again from ``addr``; 0.0 when allowed now."""
        keys = self._fail_keys(name, addr)
        pipe = self.redis.pipeline(transaction=False)
        for key, _ in keys:
            pipe.get(key)
            pipe.pttl(key)
        replies = pipe.execute()
        wait = 0.0
        for (_, limit), count, pttl in zip(keys, replies[::2], replies[1::2], strict=True):
            try:
                over = int(count or 0) >= limit
            except ValueError:
                over = True
            if over:
                wait = max(wait, pttl / 1000.0 if pttl > 0 else self.failure_window)
        return wait

    def allowed(self, name: Any, addr: str | None) -> bool:
        return self.retry_after(name, addr) == 0.0

    def clear_failures(self, name: Any) -> None:
        """Forget a user's failures after a successful login (an address's stay counted,
        so one valid account does not reset the guesses against others)."""
        self.redis.delete(self._fail_keys(name, None)[0][0])

    def login(
        self, name: Any, password: Any, addr: str | None, *, via: str = "session"
    ) -> Principal | None:
        """Throttled :meth:`verify_password`: TooManyAttempts when over the limit (checked
        before any hashing), None for a wrong name or password (counted)."""
        wait = self.retry_after(name, addr)
        if wait:
            raise TooManyAttempts(wait)
        principal = self.verify_password(name, password, via=via)
        if principal is None:
            self.record_failure(name, addr)
            return None
        self.clear_failures(name)
        return principal
