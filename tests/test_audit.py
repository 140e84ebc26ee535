"""The audit log against the real Redis: entries, redaction, caps, retention, paging."""

from __future__ import annotations

import json
import math
import time

import pytest

from monitor import audit as audit_module
from monitor.audit import MAX_LIMIT, AuditLog
from monitor.auth import Principal, Role


@pytest.fixture
def audit(store, settings):
    return AuditLog(store.redis, store.keys, settings)


def test_an_entry_says_who_what_when_where_and_how_it_ended(audit):
    before = time.time()
    entry_id = audit.record(
        "alice",
        Role.OPERATOR,
        "session",
        "task.revoke",
        "c0ffee",
        params={"terminate": True, "signal": "SIGKILL"},
        addr="10.0.0.7",
        ok=True,
        status=200,
        result={"revoked": ["c0ffee"]},
    )
    refused = audit.record(
        "anonymous", "viewer", "anonymous", "task.retry", "c0ffee", ok=False, status="refused"
    )
    page = audit.list()
    assert page["next_cursor"] is None
    newest, oldest = page["entries"]
    assert (newest["id"], oldest["id"]) == (refused, entry_id)
    assert oldest == {
        "id": entry_id,
        "at": oldest["at"],
        "who": "alice",
        "role": "operator",
        "via": "session",
        "action": "task.revoke",
        "target": "c0ffee",
        "addr": "10.0.0.7",
        "ok": True,
        "status": 200,
        "params": {"terminate": True, "signal": "SIGKILL"},
        "result": {"revoked": ["c0ffee"]},
        "token": None,
    }
    assert before <= oldest["at"] <= time.time()
    assert newest["ok"] is False and newest["status"] == "refused" and newest["addr"] is None
    assert newest["params"] is None and newest["result"] is None
    assert audit.count() == 2


def test_record_for_a_principal_keeps_the_token_id(audit):
    principal = Principal("deploy", Role.OPERATOR, "token", token_id="0123456789ab")
    audit.record_for(principal, "worker.pool_grow", target="w1@host", params={"n": 2}, status=200)
    (entry,) = audit.list()["entries"]
    assert (entry["who"], entry["role"], entry["via"], entry["token"]) == (
        "deploy",
        "operator",
        "token",
        "0123456789ab",
    )
    assert entry["params"] == {"n": 2}


def test_parameters_are_redacted_at_every_depth(audit):
    audit.record(
        "alice",
        "operator",
        "session",
        "task.apply",
        "proj.send",
        params={
            "kwargs": {"to": "bob", "password": "hunter2", "nested": {"Token": "t0k"}},
            "args": [{"secret": "s3"}, "plain"],
            "authorization": "Bearer xyz",
        },
        result={"api_key": "k3y", "ok": 1},
    )
    (entry,) = audit.list()["entries"]
    text = json.dumps(entry)
    for secret in ("hunter2", "t0k", "s3", "xyz", "k3y"):
        assert secret not in text
    assert entry["params"]["kwargs"] == {"to": "bob", "password": "***", "nested": {"Token": "***"}}
    assert entry["params"]["args"] == [{"secret": "***"}, "plain"]
    assert entry["result"] == {"api_key": "***", "ok": 1}


class Hostile:
    def __repr__(self):
        raise RuntimeError("no repr for you")


def _deep(levels):
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


def test_hostile_values_cost_a_bounded_entry(audit, store):
    loop: list = []
    loop.append(loop)
    cases = [
        {"huge": "x" * 10_000_000},
        _deep(100_000),
        {"nan": math.nan, "inf": -math.inf, "big": 10**5000, "neg": -(2**70)},
        {"bytes": b"\x00\xff" * 1000, "obj": Hostile(), "set": {1, 2}, "loop": loop},
        {(1, 2): "tuple key", 3: "int key", None: "none key", "\udcff": "surrogate key"},
        list(range(1_000_000)),
        {f"k{i}": {f"j{j}": j for j in range(100)} for i in range(100)},
        Hostile(),
        "\udcff lone surrogate",
    ]
    for value in cases:
        audit.record(
            "\udcff" * 5 + "a" * 10_000,  # who: capped, made valid UTF-8
            "operator",
            "session",
            "x" * 100_000,
            target=["not", "a", "string"],
            params=value,
            result=value,
            addr="\x00" * 1000,
            status=math.nan,
        )
    raw_entries = store.redis.xrange(store.keys.audit)
    assert len(raw_entries) == len(cases)
    for _, fields in raw_entries:
        assert sum(len(k) + len(v.encode()) for k, v in fields.items()) < 8_000
    entries = audit.list()["entries"]
    for entry in entries:
        assert len(entry["who"].encode()) <= 600 and entry["ok"] is True
        assert isinstance(entry["params"], dict | list | str)
    by_params = [e["params"] for e in reversed(entries)]
    assert by_params[0]["huge"].startswith("xxx") and "truncated" in by_params[0]["huge"]
    assert by_params[2] == {
        "nan": "nan",
        "inf": "-inf",
        "big": "<int of 16610 bits>",
        "neg": "-1180591620717411303424",
    }
    assert by_params[3]["obj"] == "<Hostile>" and by_params[3]["set"] == [1, 2]
    assert set(by_params[4]) == {"(1, 2)", "3", "None", "?"}
    assert by_params[5][-1] == "… 999950 more"
    assert entries[0]["params"] == "? lone surrogate" and entries[1]["params"] == "<Hostile>"


def test_capped_parameters_say_so(audit):
    audit.record("a", "operator", "session", "bulk.retry", params={"ids": ["x" * 40] * 50})
    (entry,) = audit.list()["entries"]
    assert entry["params_truncated"] > audit_module.MAX_PARAMS_BYTES
    assert isinstance(entry["params"], str) and "truncated" in entry["params"]


def test_retention_by_count(store, settings):
    audit = AuditLog(store.redis, store.keys, settings.replace(audit_max_entries=5))
    ids = [audit.record("a", "operator", "session", "task.revoke", str(i)) for i in range(12)]
    assert audit.count() == 5
    assert [e["id"] for e in audit.list()["entries"]] == ids[::-1][:5]


def test_retention_by_age(store, settings):
    audit = AuditLog(store.redis, store.keys, settings.replace(audit_max_age=3600.0))
    now_ms = int(time.time() * 1000)
    for old in (1000, 2000, now_ms - 7200_000):
        store.redis.xadd(store.keys.audit, {"who": "old", "action": "x"}, id=f"{old}-0")
    recent = store.redis.xadd(store.keys.audit, {"who": "recent"}, id=f"{now_ms - 600_000}-0")
    newest = audit.record("a", "operator", "session", "task.revoke", "t")
    assert [e["id"] for e in audit.list()["entries"]] == [newest, recent]


def test_paging_newest_first_with_a_cursor(audit):
    ids = [audit.record("a", "operator", "session", "task.revoke", str(i)) for i in range(25)]
    seen, cursor, pages = [], None, 0
    while True:
        page = audit.list(limit=10, before=cursor)
        seen += [e["id"] for e in page["entries"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1] and pages == 3
    assert audit.list(limit=5, before=ids[3])["entries"][0]["id"] == ids[2]
    assert audit.list(before=ids[0]) == {"entries": [], "next_cursor": None}


def test_filters_and_the_scan_budget(audit, monkeypatch):
    target = audit.record("bob", "admin", "token", "queue.purge", "celery")
    for i in range(30):
        audit.record("alice", "operator", "session", "task.revoke", str(i))
    assert [e["id"] for e in audit.list(action="queue.purge")["entries"]] == [target]
    assert len(audit.list(who="alice", limit=100)["entries"]) == 30
    assert audit.list(who="alice", action="queue.purge")["entries"] == []

    monkeypatch.setattr(audit_module, "MAX_SCAN", 12)
    found, cursor, calls = [], None, 0
    while True:
        page = audit.list(who="bob", before=cursor)
        calls += 1
        found += page["entries"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [e["id"] for e in found] == [target] and calls == 3  # 12 + 12 + 7 entries read


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": "10"}, "limit"),
        ({"limit": True}, "limit"),
        ({"limit": 2.5}, "limit"),
        ({"before": "abc"}, "before"),
        ({"before": "1-2-3"}, "before"),
        ({"before": "9" * 10_000 + "-0"}, "before"),
        ({"before": 12}, "before"),
    ],
)
def test_bad_list_arguments_are_refused(audit, kwargs, message):
    with pytest.raises(ValueError, match=message):
        audit.list(**kwargs)


def test_limits_are_clamped(audit):
    for i in range(3):
        audit.record("a", "operator", "session", "task.revoke", str(i))
    assert len(audit.list(limit=-5)["entries"]) == 1
    assert len(audit.list(limit=10**12)["entries"]) == 3
    assert MAX_LIMIT == 500


def test_foreign_entries_in_the_stream_are_read_as_data(audit, store):
    store.redis.xadd(store.keys.audit, {"params": "{not json", "at": "yesterday", "status": "9999"})
    store.redis.xadd(store.keys.audit, {"junk": "x" * 100})
    first, second = audit.list()["entries"]
    assert first["who"] == "" and first["params"] is None and first["ok"] is False
    assert second["params"] == "{not json" and second["status"] == "9999"
    assert second["at"] == int(second["id"].split("-")[0]) / 1000.0


def test_a_stored_non_finite_time_reads_as_the_entry_ids_time(settings, store):
    from monitor.audit import AuditLog

    log = AuditLog(store.redis, store.keys, settings)
    entry_id = log.record("olga", "operator", "session", "task.revoke", target="t")
    store.redis.xadd(store.keys.audit, {"at": "1e400", "who": "x", "action": "a"})
    entries = log.list(limit=10)["entries"]
    assert all(isinstance(e["at"], float) and e["at"] < 1e11 for e in entries)
    assert entries[-1]["id"] == entry_id
