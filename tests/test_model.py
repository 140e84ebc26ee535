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
    for bad in ("", None, 42, "a:timeline", "a:children", "x" * 256):
        assert not model.usable_task_id(bad)
