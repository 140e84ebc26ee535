"""Redaction that holds: the matching rule (a key containing a redacted name,
at any depth, in any repr or JSON), positional parameters, the store on both
paths, what viewers see, and URL passwords in logs.

End to end on real prefork workers: the signal hooks (producer and worker),
and the event receiver (``python -m monitor events -A tests.workerapp:app``);
every key of the test's prefix is then read back, and no secret is in any.
"""

from __future__ import annotations

import ast
import json
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import redis as redis_lib
from celery import Celery
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import monitor.signals
from monitor import model
from monitor.config import ConfigError, Settings, mask_url
from monitor.model import REDACTED, TaskEvent
from monitor.web.visibility import exception_type, visible_row, visible_task

from .helpers import (
    REDIS_URL,
    RedisServer,
    ServeProcess,
    WorkerProcess,
    clean_env,
    start_module,
    stop_process,
    wait_for,
)

NAMES = Settings().redact
BROKER = "redis://127.0.0.1:6379/14"
T = "tests.workerapp."
#: Every secret the end-to-end tests hand to a task starts with this.
SECRET = "hunter2"
PROPERTY = hsettings(max_examples=300, deadline=None, database=None)


# -- the rule ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "password",
        "db_password",
        "DB_PASSWORD",
        "client_secret",
        "access_token",
        "X_Api_Key",
        "Authorization",
        "refresh_token_v2",
        "apikey",
        "passwd",
    ],
)
def test_a_name_containing_a_pattern_is_sensitive(name):
    assert model.sensitive(name, NAMES)


@pytest.mark.parametrize("name", ["user", "options", "region", "pass", "key", "auth", ""])
def test_other_names_are_not(name):
    assert not model.sensitive(name, NAMES)


def test_reprs_are_redacted_at_any_depth_and_keep_everything_else():
    text = repr(
        (
            "bob",
            {"options": {"db_password": "s1", "n": [1, {"access_token": "s2"}]}, "user": "u"},
            [{"Client_Secret": {"deep": ["s3", ("s4",)]}}, {"name": "token value stays"}],
        )
    )
    hidden = model.redact_repr(text, NAMES)
    assert ast.literal_eval(hidden) == (
        "bob",
        {"options": {"db_password": REDACTED, "n": [1, {"access_token": REDACTED}]}, "user": "u"},
        [{"Client_Secret": REDACTED}, {"name": "token value stays"}],
    )


def test_reprs_that_are_not_literals():
    """What events carry: objects, keyword reprs, reprs cut by saferepr."""
    hidden = model.redact_repr("{'password': 'pw1', 'obj': <Foo at 0x1>, 'n': 1}", NAMES)
    assert hidden == "{'password': '***', 'obj': <Foo at 0x1>, 'n': 1}"
    hidden = model.redact_repr("Creds(user='u', api_key=<Key 'pw2'>, port=5)", NAMES)
    assert hidden == "Creds(user='u', api_key='***', port=5)"
    # saferepr cut the repr in the middle of the secret: hidden to the end
    assert (
        model.redact_repr("{'a': 1, 'token': 'pw3-and-then-so", NAMES) == "{'a': 1, 'token': '***'"
    )
    # the exception of a failed task, and its traceback's last line
    assert "pw4" not in model.redact_repr("KeyError({'secret': 'pw4'})", NAMES)
    tb = 'Traceback (most recent call last):\n  ...\nValueError: {"db_password": "pw5", "x": 1}\n'
    assert model.redact_repr(tb, NAMES).endswith('ValueError: {"db_password": "***", "x": 1}\n')


def test_free_text_and_values_that_mention_a_name_are_kept():
    for text in (
        "ValueError('the password is wrong')",
        "{'note': 'rotate the token: soon'}",
        "['password', 'secret']",
        '"a token"',
    ):
        assert model.redact_repr(text, NAMES) is text


def test_json_stays_json():
    value = {"password": 1, "list": [{"token": [1, {"x": "}"}]}, {"ok": "a,b"}], "t": None}
    hidden = model.redact_repr(json.dumps(value), NAMES)
    assert json.loads(hidden) == {
        "password": REDACTED,
        "list": [{"token": REDACTED}, {"ok": "a,b"}],
        "t": None,
    }


def test_case_and_quotes():
    assert model.redact_repr("{'PassWord': \"it's\"}", NAMES) == "{'PassWord': '***'}"
    assert model.redact_repr("{'a\\'password': 'x'}", NAMES) == "{'a\\'password': '***'}"


def _structural(value):
    """The reference rule, on values: what the scanner must produce on their text."""
    if isinstance(value, dict):
        return {
            k: REDACTED if model.sensitive(k, NAMES) else _structural(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_structural(v) for v in value]
    return value


#: Printable keys: a key is matched as its text is stored, escapes included, so
#: a control character escaped next to letters ("\\t" + "oken") would be
#: hidden too (on the safe side) where the value rule would not.
_PRINTABLE = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))
_KEYS = st.sampled_from(
    ["user", "db_password", "Token", "client_secret", "n", "x'y", 'q"t', "a,b", "}", "é"]
) | st.text(alphabet=_PRINTABLE, max_size=8)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
    | st.sampled_from(["password", "'", '"', "\\", "}", "{'token': 1}", '{"token": 1}'])
)
VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=25,
)


@PROPERTY
@given(value=VALUES)
def test_any_json_text_is_redacted_exactly_as_its_value(value):
    text = json.dumps(value, ensure_ascii=False)
    assert json.loads(model.redact_repr(text, NAMES)) == _structural(value)


@PROPERTY
@given(value=VALUES)
def test_any_python_repr_is_redacted_exactly_as_its_value(value):
    assert ast.literal_eval(model.redact_repr(repr(value), NAMES)) == _structural(value)


def test_hostile_texts_cost_one_pass():
    """Huge, deep, unterminated, backslash-ridden: no recursion, no backtracking."""
    deep = "{'token': " * 50_000 + "1" + "}" * 50_000
    assert model.redact_repr(deep, NAMES) == "{'token': '***'}"
    many = repr({f"k{i}_token": i for i in range(20_000)})
    hidden = model.redact_repr(many, NAMES)
    assert set(ast.literal_eval(hidden).values()) == {REDACTED}
    assert model.redact_repr("'" + "\\" * 100_001, NAMES) == "'" + "\\" * 100_001
    unbalanced = "{'password': (((((" + "[" * 10_000
    assert model.redact_repr(unbalanced, NAMES) == "{'password': '***'"
    assert model.redact_repr("x" * 1_000_000, NAMES) == "x" * 1_000_000
    assert model.redact_repr(f"{{'token': {float('nan')}, 'n': inf}}", NAMES) == (
        "{'token': '***', 'n': inf}"
    )
    assert model.redact_repr("", NAMES) == "" and model.redact_repr("{'token': 1}", ()) == (
        "{'token': 1}"
    )


def test_redact_mapping_uses_the_same_rule():
    assert model.redact_mapping({"DB_Password": 1, "user": "u", 3: "x"}, NAMES) == {
        "DB_Password": REDACTED,
        "user": "u",
        3: "x",
    }


# -- positional parameters ---------------------------------------------------------------
def test_sensitive_positions_follow_the_signature():
    def login(user, password, options=None, *rest, token=None):
        pass

    class Task:
        def run(self, user, api_key):
            pass

    assert model.sensitive_positions(login, NAMES) == (1,)
    assert model.sensitive_positions(Task().run, NAMES) == (1,)  # bound: no self
    assert model.sensitive_positions(lambda *args, **kw: None, NAMES) == ()
    assert model.sensitive_positions(len, NAMES) == ()  # a builtin: positional-only, no name
    assert model.sensitive_positions(login, ()) == ()


def test_positional_args_and_their_repr():
    assert model.redact_positional(["bob", "pw", {}], (1,)) == ["bob", REDACTED, {}]
    args = ("bob",)
    assert model.redact_positional(args, (1,)) is args  # not passed: untouched
    assert model.redact_args_repr("('bob', 'pw', {'a': (1, 2)})", (1, 2)) == "('bob', '***', '***')"
    assert model.redact_args_repr("['bob', <Pw object>]", (1,)) == "['bob', '***']"
    assert model.redact_args_repr("('bob',)", (1,)) == "('bob',)"
    assert model.redact_args_repr("('bob', 'pw-cut-by-sa", (1,)) == "('bob', '***'"
    # a custom argsrepr the scanner cannot split: hidden whole
    assert model.redact_args_repr("<hidden by the app>", (1,)) == REDACTED
    assert model.redact_args_repr("", (1,)) == "" and model.redact_args_repr(None, (1,)) is None


# -- the store: what reaches Redis ------------------------------------------------------
def _stored_fields(store, **fields):
    return store.record(TaskEvent("t1", "PENDING", time.time(), "signal", "h", fields))[6]


def test_the_store_redacts_every_data_field(store):
    meta = {"step": 1, "session": {"access_token": "pw1"}}
    args_json = ["bob", {"cfg": [{"DB_PASSWORD": "pw2"}]}]
    kwargs_json = {"client_secret": "pw3", "user": "u"}
    fields = _stored_fields(
        store,
        name="proj.login",
        args="('bob', {'cfg': [{'DB_PASSWORD': 'pw2'}]})",
        kwargs="{'client_secret': 'pw3', 'user': 'u'}",
        args_json=args_json,
        kwargs_json=kwargs_json,
        progress=meta,
        result="{'auth': {'api_key': 'pw4'}, 'ok': True}",
        exception="KeyError({'password': 'pw5'})",
        traceback="Traceback ...\nKeyError: {'password': 'pw5'}\n",
        reason="Retry(Creds(token='pw6'))",
    )
    assert not [k for k, v in fields.items() if "pw" in v], fields
    assert json.loads(fields["args_json"]) == ["bob", {"cfg": [{"DB_PASSWORD": REDACTED}]}]
    assert json.loads(fields["progress"]) == {"step": 1, "session": {"access_token": REDACTED}}
    assert fields["name"] == "proj.login" and "'ok': True" in fields["result"]
    # the hook's values are the user's own objects: never changed in place
    assert meta == {"step": 1, "session": {"access_token": "pw1"}}
    assert args_json[1]["cfg"][0]["DB_PASSWORD"] == "pw2" and kwargs_json["client_secret"] == "pw3"


def test_the_store_keeps_the_cap_when_hiding_lengthens_a_value(store):
    store.settings = store.settings.replace(max_field_bytes=400)
    text = repr({f"token{i}": i for i in range(27)})  # each number becomes '***'
    assert len(text) <= 400 < len(model.redact_repr(text, NAMES))
    fields = _stored_fields(store, result=text)
    assert fields["result"].startswith("{'token0': '***', 'token1': '***'")
    assert len(fields["result"].encode()) <= 400 + len("… [truncated: 999 bytes]".encode())
    assert int(fields["result_truncated"]) > 400
    huge = "{'password': '" + "x" * 100_000 + "'}"  # cut first, then hidden: cheap
    fields = _stored_fields(store, result=huge)
    assert fields["result"] == "{'password': '***'" and fields["result_truncated"] == "100016"


def test_event_extra_fields_with_a_sensitive_name_are_hidden(store):
    record = TaskEvent.from_celery_event(
        {
            "type": "task-received",
            "uuid": "extras",
            "timestamp": time.time(),
            "hostname": "w1",
            "name": "proj.x",
            "api_token": "pw1",
            "note": "{'password': 'pw2', 'keep': 1}",
            "region": "eu",
        }
    )
    store.apply([record])
    task = store.get_task("extras")
    assert task["api_token"] == REDACTED and task["region"] == "eu"
    assert task["note"] == "{'password': '***', 'keep': 1}"


def test_the_publish_body_check_uses_the_same_rule():
    """Helper F's check (the body kept for a faithful retry): a key containing
    a redacted name anywhere refuses the body, a value mentioning one does not."""
    from monitor.signals.handlers import _holds_secret

    assert _holds_secret('[[], {"o": {"Client_Secret_2": 1}}, {}]', True, NAMES) == "secret"
    assert _holds_secret('[["client_secret"], {"o": "a token"}, {}]', True, NAMES) is None


# -- what viewers see --------------------------------------------------------------------
def test_visible_task_never_shows_the_republish_payload():
    task = {"id": "a", "state": "SUCCESS", "result": "5", "body": "[[1],{},{}]"}
    task["publish_headers"] = '{"shadow": "x"}'
    task["children_rows"] = [{"id": "c", "args": "(1,)", "body": "b"}]
    shown = visible_task(task, True)
    assert shown == {
        "id": "a",
        "state": "SUCCESS",
        "result": "5",
        "children_rows": [{"id": "c", "args": "(1,)"}],
    }
    assert "body" in task and "body" in task["children_rows"][0]  # the input is untouched
    plain = {"id": "b", "state": "SUCCESS", "result": "5"}
    assert visible_row(plain, True) is plain  # nothing to remove: no copy


def test_visible_task_hides_data_from_who_may_not_see_it():
    task = {
        "id": "a",
        "state": "FAILURE",
        "name": "proj.pay",
        "args": "('4111 1111',)",
        "args_truncated": "99999",
        "kwargs": "{}",
        "args_json": "[]",
        "kwargs_json": "{}",
        "result": "None",
        "progress": '{"card": "4111"}',
        "exception": "ValueError('card 4111 declined')",
        "traceback": "Traceback ...\nValueError: card 4111 declined",
        "reason": "x",
        "retries": "0",
        "worker": "w1",
        "children_rows": [{"id": "c", "state": "SUCCESS", "result": "'4111'"}],
    }
    shown = visible_task(task, False)
    assert "4111" not in json.dumps(shown)
    assert shown["exception"] == "ValueError"
    assert (shown["name"], shown["worker"], shown["retries"]) == ("proj.pay", "w1", "0")
    assert shown["hidden"] == sorted(
        ["args", "kwargs", "args_json", "kwargs_json", "result", "progress", "exception"]
        + ["traceback", "reason"]
    )
    assert shown["children_rows"] == [{"id": "c", "state": "SUCCESS", "hidden": ["result"]}]
    plain = {"id": "b", "state": "PENDING", "name": "x"}
    assert visible_row(plain, False) is plain


def test_visible_task_takes_odd_rows_as_they_are():
    task = {"id": "a", "children_rows": [None, "x", {"id": "c", "body": "b"}], "hidden": 1}
    shown = visible_task(task, False)
    assert shown["children_rows"] == [None, "x", {"id": "c"}] and shown["hidden"] == 1
    odd = {"id": "b", "children_rows": "not a list", "exception": 42}
    assert visible_task(odd, False) == {
        "id": "b",
        "children_rows": "not a list",
        "exception": "",
        "hidden": ["exception"],
    }
    assert visible_task(odd, True) is odd


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("ValueError('x')", "ValueError"),
        ("celery.exceptions.Retry('x')", "celery.exceptions.Retry"),
        ("NotRegistered: unknown task 'x'", "NotRegistered"),
        ("the password is x", ""),
        ("secret", ""),
        ("<Foo>", ""),
        (None, ""),
        (42, ""),
        ("E" * 5000 + "(", ""),
    ],
)
def test_exception_type(text, kind):
    assert exception_type(text) == kind


# -- URL passwords -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://user:p%40ss@h:1/2", "rediss://user:***@h:1/2"),
        ("amqp://guest:gu@st@host:5672//", "amqp://guest:***@host:5672//"),
        ("redis://h/0?db=1&password=pw", "redis://h/0?db=1&password=***"),
        (
            "sentinel://:a@h1:26379;sentinel://:b@h2:26379",
            "sentinel://:***@h1:26379;sentinel://:***@h2:26379",
        ),
        (
            "lost redis://:pw@h:1/0 (and amqp://u:pw@h//)",
            "lost redis://:***@h:1/0 (and amqp://u:***@h//)",
        ),
        ("redis://user@h/0", "redis://user@h/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("", ""),
        (None, None),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_settings_repr_and_errors_never_show_a_url_password():
    s = Settings(
        redis_url="redis://:pw-store@h/0",
        broker_url="amqp://u:pw-broker@h//",
        message_queue="redis://:pw-queue@h/1",
    )
    assert "pw-" not in repr(s) and "pw-" not in str(s) and "redis://:***@h/0" in repr(s)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"MONITOR_REDIS_URL": "http://:pw-bad@h/0"})
    assert "pw-bad" not in str(caught.value) and "http://:***@h/0" in str(caught.value)


class PasswordRedis(RedisServer):
    """A private redis-server that wants a password (``--requirepass``)."""

    def __init__(self) -> None:
        self.password = "pw-" + uuid.uuid4().hex
        super().__init__(args=["--requirepass", self.password])

    def url_for(self, db: int) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"


def test_no_log_line_shows_a_url_password(prefix):
    """serve (with its receiver), events and a hooked worker on a Redis that
    wants a password: they work, and their logs show the URLs masked only."""
    server = PasswordRedis().start()
    store_url, broker_url = server.url_for(0), server.url_for(1)
    queue = f"q-{prefix}"
    events_log = Path(tempfile.mkstemp(prefix="monitor-test-events-", suffix=".log")[1])
    serve = ServeProcess(store_url, prefix, broker=broker_url)
    worker = WorkerProcess(
        broker=broker_url, queue=queue, prefix=prefix, redis_url=store_url, events=True
    )
    app = Celery("password-producer", broker=broker_url, set_as_current=False)
    store_client = redis_lib.Redis.from_url(store_url, decode_responses=True)
    events = None
    try:
        serve.start()
        with open(events_log, "w") as log:
            events = start_module(
                "monitor",
                *("events", "--redis", store_url, "--broker", broker_url, "--prefix", prefix + "e"),
                env=clean_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        worker.start()
        result = app.send_task(T + "add", (2, 3), queue=queue)
        for p in (prefix, prefix + "e"):  # hooks + serve's receiver, and the events command
            wait_for(
                lambda p=p: store_client.hget(f"{p}:task:{result.id}", "state") == "SUCCESS",
                60,
                what=f"the task stored under {p}",
            )
        wait_for(lambda: "event receiver connected" in events_log.read_text(), 30)
    finally:
        worker.stop()
        if events is not None:
            stop_process(events)
        serve_log = serve.log()
        serve.stop()
        app.close()
        store_client.close()
        server.stop()
    logs = {"serve": serve_log, "events": events_log.read_text(), "worker": worker.log()}
    events_log.unlink()
    worker.log_path.unlink(missing_ok=True)
    for name, text in logs.items():
        assert server.password not in text, f"{name} logged the password:\n{text[-3000:]}"
    masked = f"redis://:***@127.0.0.1:{server.port}/0"
    assert f"(redis {masked}, prefix" in logs["serve"]
    assert f"recording events into {masked}" in logs["events"]
    # kombu's own mask on the broker URL
    assert f"event receiver connected to redis://:**@127.0.0.1:{server.port}/1" in logs["events"]


# -- end to end: nothing secret reaches Redis ---------------------------------------------
def everything_stored(client: redis_lib.Redis, prefix: str) -> list[bytes]:
    """Every key, field, member and value under ``prefix``, whatever its type."""
    seen: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        seen.append(key)
        kind = client.type(key)
        if kind == b"hash":
            for field, value in client.hgetall(key).items():
                seen += [field, value]
        elif kind == b"list":
            seen += client.lrange(key, 0, -1)
        elif kind == b"set":
            seen += client.smembers(key)
        elif kind == b"zset":
            seen += client.zrange(key, 0, -1)
        elif kind == b"stream":
            for _id, entry in client.xrange(key):
                for field, value in entry.items():
                    seen += [field, value]
        elif kind == b"string":
            seen.append(client.get(key))
        else:
            raise AssertionError(f"{key!r}: a {kind!r} the test does not read")
    return seen


def assert_no_secret(client: redis_lib.Redis, prefix: str) -> None:
    stored = everything_stored(client, prefix)
    assert len(stored) > 20, "nothing stored: the test would prove nothing"
    leaks = [value for value in stored if SECRET.encode() in value]
    assert not leaks, leaks[:5]


def _calls(tag: str) -> dict[str, tuple[tuple, dict]]:
    """The calls both paths make: positional, keyword, and one that fails."""
    return {
        "positional": (
            (
                "bob",
                f"{SECRET}-pos-{tag}",
                {
                    "db_password": f"{SECRET}-db-{tag}",
                    "region": "eu-1",
                    "keys": {"api_key": f"{SECRET}-key-{tag}", "name": "k2"},
                    "tag": tag,
                },
            ),
            {},
        ),
        "keyword": (
            (),
            {
                "user": "alice",
                "password": f"{SECRET}-kw-{tag}",
                "options": {"tag": tag, "region": "us-2", "Client_Secret": f"{SECRET}-cs-{tag}"},
            },
        ),
        "failing": (("carol", f"{SECRET}-pos-{tag}", {"tag": tag, "fail": True}), {}),
    }


def _final(store, task_id: str, state: str, *fields: str) -> dict:
    return wait_for(
        lambda: (
            (t := store.get_task(task_id))
            and t["state"] == state
            and all(f in t for f in fields)
            and t
        ),
        60,
        0.1,
        what=f"{task_id} {state} with {fields}",
    )


def check_common(store, ids: dict[str, str], tag: str, *, signals: bool) -> None:
    """What both paths must store: the non-secret values intact, the rest hidden."""
    pos = _final(store, ids["positional"], "SUCCESS", "args", "progress")
    assert ast.literal_eval(pos["args"]) == (
        "bob",
        REDACTED,
        {
            "db_password": REDACTED,
            "region": "eu-1",
            "keys": {"api_key": REDACTED, "name": "k2"},
            "tag": tag,
        },
    )
    assert ast.literal_eval(pos["result"]) == {
        "user": "bob",
        "region": "eu-1",
        "auth": {"client_secret": REDACTED, "scope": "read"},
    }
    progress = json.loads(pos["progress"])
    assert progress == {
        "step": "auth",
        "session": {
            "access_token": REDACTED,
            "user": "bob",
            "grants": [{"scopes": [{"refresh_token": REDACTED, "scope": "read"}]}],
        },
    }
    kw = _final(store, ids["keyword"], "SUCCESS", "kwargs")
    kwargs = ast.literal_eval(kw["kwargs"])
    assert kwargs["password"] == REDACTED and kwargs["user"] == "alice"
    assert kwargs["options"]["Client_Secret"] == REDACTED and kwargs["options"]["region"] == "us-2"
    failed = _final(store, ids["failing"], "FAILURE", "exception", "traceback")
    assert (
        failed["exception"].startswith("ValueError(") and "'user': 'carol'" in failed["exception"]
    )
    assert "ValueError" in failed["traceback"]
    if signals:
        assert json.loads(pos["args_json"]) == list(ast.literal_eval(pos["args"]))
        assert json.loads(kw["kwargs_json"])["options"]["Client_Secret"] == REDACTED
        # the body a retry would republish is not kept either (helper F's rule)
        assert pos["body_error"] == "a positional argument is a redacted parameter: not stored"
        assert kw["body_error"] == "it holds a redacted name (password): not stored"


def test_signal_hooks_store_no_secret(store, settings):
    """Producer hooks (this process; the task registered, as in an app) and a
    real prefork worker's hooks."""
    prefix, queue = settings.prefix, f"q-{settings.prefix}"
    app = Celery("redaction-producer", broker=BROKER, set_as_current=False)
    app.conf.update(task_default_queue=queue, broker_connection_retry_on_startup=True)

    @app.task(name=T + "login", shared=False)
    def login(user, password, options=None):  # pragma: no cover - runs in the worker
        raise NotImplementedError

    monitor.signals.connect(app, redis_url=REDIS_URL, prefix=prefix)
    worker = WorkerProcess(broker=BROKER, queue=queue, prefix=prefix, hooks=True)
    try:
        worker.start()
        calls = _calls("sig")
        # by name first, the task still a promise of the app (never finalized,
        # never used): the hook reads its parameters off the promise
        assert not app.finalized and login.__evaluated__() is False
        ids = {"positional": app.send_task(T + "login", *calls.pop("positional")).id}
        ids.update(
            (what, login.apply_async(args, kwargs).id) for what, (args, kwargs) in calls.items()
        )
        check_common(store, ids, "sig", signals=True)
    finally:
        worker.stop()
        monitor.signals.disconnect()
        app.close()
        worker.log_path.unlink(missing_ok=True)
        redis_lib.Redis.from_url(BROKER).delete(queue)
    assert_no_secret(redis_lib.Redis.from_url(REDIS_URL), prefix)


def test_event_receiver_stores_no_secret(store, settings):
    """``python -m monitor events -A tests.workerapp:app`` (the app knows the
    task, so positional arguments are hidden too) and a worker with -E, no hooks;
    the producer sends task-sent events."""
    prefix, queue = settings.prefix, f"q-{settings.prefix}"
    log_path = Path(tempfile.mkstemp(prefix="monitor-test-events-", suffix=".log")[1])
    with open(log_path, "w") as log:
        receiver = start_module(
            "monitor",
            *("events", "-A", "tests.workerapp:app", "--broker", BROKER, "--redis", REDIS_URL),
            *("--prefix", prefix, "--no-enable-events"),
            env=clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    worker = WorkerProcess(broker=BROKER, queue=queue, prefix=prefix, hooks=False, events=True)
    app = Celery("redaction-events-producer", broker=BROKER, set_as_current=False)
    app.conf.update(task_send_sent_event=True, broker_connection_retry_on_startup=True)
    try:
        worker.start()
        # the receiver is listening once it has recorded the worker's heartbeat
        wait_for(lambda: store.worker(worker.hostname), 60, what="the worker seen through events")
        ids = {
            what: app.send_task(T + "login", args, kwargs, queue=queue).id
            for what, (args, kwargs) in _calls("ev").items()
        }
        check_common(store, ids, "ev", signals=False)
        sent = [e for e in store.get_task(ids["positional"])["timeline"] if e["state"] == "PENDING"]
        assert sent and sent[0]["sources"] == ["event"]  # task-sent was seen, and hidden too
    finally:
        worker.stop()
        stop_process(receiver)
        app.close()
        redis_lib.Redis.from_url(BROKER).delete(queue)
    output = log_path.read_text()
    log_path.unlink()
    worker.log_path.unlink(missing_ok=True)
    assert "malformed" not in output, output[-3000:]
    assert_no_secret(redis_lib.Redis.from_url(REDIS_URL), prefix)
