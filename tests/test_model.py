"""Pure unit tests of the model: event parsing, capping, redaction, settings."""

from __future__ import annotations

import pytest

from monitor import model
from monitor.config import ConfigError, Settings
from monitor.model import MalformedEvent, TaskEvent, WorkerEvent


def test_task_event_from_celery_event_maps_subject_to_state():
    ev = TaskEvent.from_celery_event(
        {
            "type": "task-received",
            "uuid": "abc",
            "timestamp": 1700000000.5,
            "hostname": "w1@host",
            "name": "proj.add",
            "args": "(1, 2)",
            "kwargs": "{}",
            "retries": 0,
            "clock": 7,
            "local_received": 1700000000.6,
            "utcoffset": 0,
            "pid": 123,
        }
    )
    assert isinstance(ev, TaskEvent)
    assert (ev.task_id, ev.state, ev.timestamp, ev.source) == (
        "abc",
        "RECEIVED",
        1700000000.5,
        "event",
    )
    assert ev.fields["worker"] == "w1@host"
    assert ev.fields["name"] == "proj.add"
    # envelope keys are not facts about the task
    assert "clock" not in ev.fields and "local_received" not in ev.fields and "pid" not in ev.fields


def test_task_sent_is_pending_with_client_not_worker():
    ev = TaskEvent.from_celery_event(
        {"type": "task-sent", "uuid": "x", "timestamp": 1.0, "hostname": "web-1", "queue": "q"}
    )
    assert ev.state == "PENDING"
    assert ev.fields["client"] == "web-1"
    assert "worker" not in ev.fields


def test_custom_event_keeps_its_payload_as_progress_json():
    ev = TaskEvent.from_celery_event(
        {
            "type": "task-progress",
            "uuid": "x",
            "timestamp": 2.0,
            "hostname": "w",
            "current": 3,
            "total": 10,
        }
    )
    assert ev.state == "PROGRESS"
    assert ev.fields["progress"] == '{"current":3,"total":10}'


def test_worker_events():
    ev = TaskEvent.from_celery_event(
        {
            "type": "worker-heartbeat",
            "hostname": "w1",
            "timestamp": 3.0,
            "freq": 2.0,
            "active": 1,
            "processed": 9,
            "loadavg": [0.1, 0.2, 0.3],
            "sw_ident": "py-celery",
        }
    )
    assert isinstance(ev, WorkerEvent)
    assert ev.kind == "heartbeat"
    assert ev.fields["processed"] == 9 and ev.fields["loadavg"] == [0.1, 0.2, 0.3]


@pytest.mark.parametrize(
    "body",
    [
        None,
        "not a dict",
        [],
        {},
        {"type": 5},
        {"type": "nodash"},
        {"type": "task-succeeded", "timestamp": 1.0},  # no uuid
        {"type": "task-succeeded", "uuid": "", "timestamp": 1.0},
        {"type": "task-succeeded", "uuid": "a", "timestamp": "yesterday"},
        {"type": "task-succeeded", "uuid": "a", "timestamp": float("nan")},
        {"type": "task-succeeded", "uuid": "a", "timestamp": -1},
        {"type": "task-<script>", "uuid": "a", "timestamp": 1.0},
        {"type": "worker-heartbeat", "timestamp": 1.0},  # no hostname
        {"type": "worker-dance", "hostname": "w", "timestamp": 1.0},
        # ids that would name another task's timeline or children key
        {"type": "task-received", "uuid": "a:timeline", "timestamp": 1.0},
        {"type": "task-received", "uuid": "a:children", "timestamp": 1.0},
        {"type": "task-received", "uuid": "x" * 256, "timestamp": 1.0},
    ],
)
def test_malformed_events_raise_a_clear_error(body):
    with pytest.raises(MalformedEvent):
        TaskEvent.from_celery_event(body)


def test_unknown_group_is_ignored_not_an_error():
    assert TaskEvent.from_celery_event({"type": "scheduler-tick", "timestamp": 1.0}) is None


def test_cap_text_marks_truncation_and_keeps_utf8_valid():
    text = "é" * 10_000  # 20,000 bytes
    capped, size = model.cap_text(text, 1000)
    assert size == 20_000
    assert capped.endswith("… [truncated: 20000 bytes]")
    assert len(capped.split("…")[0].encode()) <= 1000
    assert model.cap_text("short", 1000) == ("short", 0)


def test_redaction_of_mappings_and_reprs():
    names = ("password", "token")
    assert model.redact_mapping({"Password": "x", "user": "u"}, names) == {
        "Password": "***",
        "user": "u",
    }
    assert model.redact_repr("{'token': 'abc', 'n': 1}", names) == "{'token': '***', 'n': 1}"
    # not a literal: falls back to a pattern, still hides the value
    hidden = model.redact_repr("{'password': 'hunter2', 'obj': <Foo at 0x1>}", names)
    assert "hunter2" not in hidden and "'***'" in hidden
    assert model.redact_repr("{'user': 'u'}", names) == "{'user': 'u'}"


def test_rank_follows_celery_precedence():
    assert model.rank("SUCCESS") < model.rank("FAILURE") < model.rank("PROGRESS")
    assert model.rank("PROGRESS") < model.rank("STARTED") < model.rank("RECEIVED")
    assert model.rank("RECEIVED") < model.rank("RETRY") < model.rank("PENDING")
    assert model.rank("PROGRESS") == model.rank("ANY_CUSTOM") == model.CUSTOM_RANK


def test_settings_from_env_and_errors_name_the_variable():
    s = Settings.from_env(
        {"MONITOR_PREFIX": "p1", "MONITOR_MAX_TASKS": "50", "MONITOR_REDACT": "A, b"}
    )
    assert (s.prefix, s.max_tasks, s.redact) == ("p1", 50, ("a", "b"))
    with pytest.raises(ConfigError, match="MONITOR_MAX_TASKS"):
        Settings.from_env({"MONITOR_MAX_TASKS": "lots"})
    with pytest.raises(ConfigError, match="MONITOR_MAX_TASKS"):
        Settings.from_env({"MONITOR_MAX_TASKS": "0"})
    with pytest.raises(ConfigError, match="MONITOR_REDIS_URL"):
        Settings.from_env({"MONITOR_REDIS_URL": "http://nope"})
    with pytest.raises(ConfigError, match="MONITOR_ENABLE_EVENTS"):
        Settings.from_env({"MONITOR_ENABLE_EVENTS": "maybe"})
    # overrides beat the environment; None means "not given"
    s = Settings.from_env({"MONITOR_PREFIX": "env"}, prefix="flag", port=None)
    assert s.prefix == "flag" and s.port == 5555
    with pytest.raises(ConfigError, match="nope"):
        Settings.from_env({}, nope=1)


def test_describe_lists_every_setting():
    names = [row[0] for row in Settings.describe()]
    assert (
        "MONITOR_REDIS_URL" in names and "MONITOR_PREFIX" in names and "MONITOR_BROKER_URL" in names
    )
    assert len(names) == len(set(names))


def test_custom_task_ids_are_usable_unless_they_collide_with_key_suffixes():
    assert model.usable_task_id("user:42:welcome-mail")  # custom task_id= with colons
    assert model.usable_task_id("d0c5e1a2-0000-4000-8000-000000000000")
    assert model.usable_task_id("é" * 255)  # 510 UTF-8 bytes: fits the store's key parts
    assert not model.usable_task_id("€" * 255)  # 765: does not
    for bad in ("", None, 42, "a:timeline", "a:children", "x" * 256):
        assert not model.usable_task_id(bad)


# -- hostile input: every field type-checked, nothing but MalformedEvent escapes --
HUGE = 10**400  # float() of it raises OverflowError; json decodes it as an int
DEEP: list = []
for _ in range(5000):  # beyond Python's recursion limit
    DEEP = [DEEP]


def task_ev(type_="task-received", **fields):
    return {"type": type_, "uuid": "u1", "timestamp": 1700000000.0, "hostname": "w1", **fields}


def worker_ev(**fields):
    return {"type": "worker-heartbeat", "hostname": "w1", "timestamp": 1700000000.0, **fields}


@pytest.mark.parametrize(
    "body",
    [
        # times: out of range, non-finite, wrong type
        task_ev(timestamp=HUGE),
        task_ev(timestamp=-HUGE),
        task_ev(timestamp=float("inf")),
        task_ev(timestamp="1e999"),
        task_ev(timestamp="nan"),
        task_ev(timestamp=True),
        task_ev(timestamp=[1.0]),
        task_ev(timestamp={"t": 1}),
        task_ev(timestamp="1" * 100_000),
        worker_ev(timestamp=HUGE),
        # ids, hosts, names, types of the wrong type or size
        task_ev(uuid=5),
        task_ev(uuid={"id": "a"}),
        task_ev(uuid=["a"]),
        task_ev(uuid="€" * 255),  # 255 characters, but 765 UTF-8 bytes: no key part
        task_ev(hostname=["h"]),
        task_ev(hostname={"h": 1}),
        task_ev(hostname=5),
        task_ev(hostname="h" * 10_000),
        task_ev(type=["task-received"]),
        task_ev(type="task-" + "x" * 100),
        task_ev(name={"n": 1}),
        task_ev(name=5),
        task_ev(name=""),
        task_ev(name="n" * 10_000),
        task_ev(parent_id=5),
        task_ev(parent_id=""),
        task_ev(root_id="r" * 300),
        task_ev(group_id={"g": 1}),
        task_ev(queue=["q"]),
        task_ev(eta={"when": "now"}),
        task_ev(expires=float("nan")),
        # numbers: wrong type, negative, non-finite, beyond 2**53
        task_ev(retries="abc"),
        task_ev(retries=float("inf")),
        task_ev(retries=1.5),
        task_ev(retries=-1),
        task_ev(retries=HUGE),
        task_ev(retries=[1]),
        task_ev("task-succeeded", runtime=[1]),
        task_ev("task-succeeded", runtime="fast"),
        task_ev("task-succeeded", runtime=float("nan")),
        task_ev("task-succeeded", runtime=-1.0),
        task_ev("task-succeeded", runtime=HUGE),
        task_ev("task-started", pid="123"),
        task_ev("task-started", pid=-5),
        task_ev("task-started", pid=1e300),
        # unencodable custom payload (nested beyond the recursion limit)
        task_ev("task-progress", current=DEEP),
        # worker events
        worker_ev(hostname=["w"]),
        worker_ev(hostname="w" * 10_000),
        worker_ev(freq="fast"),
        worker_ev(freq=float("nan")),
        worker_ev(freq=[2]),
        worker_ev(active=-1),
        worker_ev(active="3"),
        worker_ev(processed=HUGE),
        worker_ev(processed=float("inf")),
        worker_ev(loadavg="high"),
        worker_ev(loadavg=[1, 2, 3, 4]),
        worker_ev(loadavg=["a"]),
        worker_ev(loadavg=[float("nan")]),
        worker_ev(pid="x"),
        worker_ev(sw_ident={"a": 1}),
        worker_ev(sw_ver="v" * 10_000),
        worker_ev(queues="celery"),
        worker_ev(queues=[{"name": "q"}]),
    ],
    ids=lambda body: model.brief(body)[:60],
)
def test_hostile_field_values_make_a_malformed_event_and_nothing_else(body):
    with pytest.raises(MalformedEvent) as info:
        TaskEvent.from_celery_event(body)
    assert len(str(info.value)) < 300  # the message quotes the value, briefly


def test_worker_freq_is_clamped_to_a_sane_range():
    """A forged freq of 1e308 would keep a worker online for ever (last + 2 x freq)."""
    for freq, stored in [(1e308, 3600.0), (HUGE, 3600.0), (0, 0.1), (-5, 0.1), (2, 2.0)]:
        assert TaskEvent.from_celery_event(worker_ev(freq=freq)).fields["freq"] == stored


def test_plain_values_are_kept_with_their_types():
    ev = TaskEvent.from_celery_event(
        task_ev("task-started", retries=3.0, pid=42, eta="2026-01-01T00:00:00", signum=15)
    )
    assert ev.fields["retries"] == 3 and type(ev.fields["retries"]) is int
    assert ev.fields["pid"] == 42 and ev.fields["signum"] == "15"
    w = TaskEvent.from_celery_event(worker_ev(loadavg=[1, 0.5, 0.25], active=2, processed=10))
    assert w.fields == {"loadavg": [1, 0.5, 0.25], "active": 2, "processed": 10}


def test_containers_in_text_fields_become_json_and_deep_ones_are_malformed():
    ev = TaskEvent.from_celery_event(
        task_ev(args=[1, "a", None], kwargs={"x": float("nan")}, result={"big": HUGE})
    )
    assert ev.fields["args"] == '[1,"a",null]'
    assert ev.fields["kwargs"] == '{"x":null}'  # strict JSON: NaN is null
    assert ev.fields["result"] == f'{{"big":{HUGE}}}'
    with pytest.raises(MalformedEvent):
        TaskEvent.from_celery_event(task_ev(args=DEEP))


def test_extra_fields_are_capped_and_never_set_what_the_store_owns():
    # (uuid and timestamp are the envelope's, "type" is not an extra either)
    forged = {name: "FORGED" for name in model.STORE_OWNED_FIELDS - {"uuid", "timestamp"}}
    event = task_ev(
        **forged,
        args_truncated="1",
        sent_reported="1",
        worker="evil",
        client="evil",
        args_json="[1]",
        progress="{}",
        **{"a b!": "sanitised", "n" * 1000: "long name", "\u00e9t\u00e9": "unicode"},
        big="x" * 100_000,
        nested={"a": [1, 2]},
        number=2**70,
        nan=float("nan"),
        deep=DEEP,
        **{f"x{i}": "v" for i in range(10_000)},
    )
    ev = TaskEvent.from_celery_event(event, max_extra_fields=40, max_field_bytes=1000)
    for name in model.STORE_OWNED_FIELDS:
        assert name not in ev.fields
    markers = {"big_truncated", "fields_truncated"}  # the model's own, not the event's
    assert not [k for k in ev.fields if model.store_owned(k) and k not in markers]
    assert ev.fields["worker"] == "w1" and "client" not in ev.fields
    assert "args_json" not in ev.fields and "progress" not in ev.fields
    assert ev.fields["a_b_"] == "sanitised" and ev.fields["_t_"] == "unicode"
    assert ev.fields["n" * 64] == "long name"
    assert ev.fields["big"].endswith("… [truncated: 100000 bytes]")
    assert ev.fields["big_truncated"] == "100000"
    assert ev.fields["nested"] == '{"a":[1,2]}' and ev.fields["nan"] == "nan"
    assert ev.fields["number"] == str(2**70) and "deep" not in ev.fields
    extras = [k for k in ev.fields if k.startswith("x") and k[1:].isdigit()]
    kept = 40 - 7  # a b!, n..., été, big, nested, number, nan came first
    assert len(extras) == kept
    # everything else is counted: owned names, derived names, the deep value, the rest
    not_kept = len(forged) + 6 + 1 + (10_000 - kept)
    assert ev.fields["fields_truncated"] == str(not_kept)
    assert all(type(v) in (str, int, float) for v in ev.fields.values())


def test_an_ordinary_event_has_no_extras_marker():
    ev = TaskEvent.from_celery_event(task_ev(name="proj.add", args="()", kwargs="{}", retries=0))
    assert set(ev.fields) == {"name", "args", "kwargs", "retries", "worker"}
