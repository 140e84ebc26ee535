"""The command line: help, errors that name the setting, `celery -A proj monitor`."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

from click.testing import CliRunner

from monitor.audit import AuditLog
from monitor.auth import AuthStore, Principal, Role
from monitor.cli import main

from .helpers import ROOT, clean_env, free_port, http_get, start_module, stop_process, wait_for


def run(*args, env=None, input=None):
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args],
        cwd=ROOT,
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=60,
        input=input,
    )


def test_help_lists_the_commands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("events", "serve", "demo"):
        assert command in result.stdout
    assert "--no-events" in run("serve", "--help").stdout


def test_bad_values_exit_2_naming_the_setting():
    result = run("events", env={"MONITOR_MAX_AGE": "forever"})
    assert result.returncode == 2 and "--max-age" in result.stderr
    result = run("events", "--redis", "http://nope")
    assert result.returncode == 2 and "MONITOR_REDIS_URL" in result.stderr
    result = run("serve", "--no-events", env={"MONITOR_STREAM_MAXLEN": "-3"})
    assert result.returncode == 2 and "MONITOR_STREAM_MAXLEN" in result.stderr
    result = run("events", "-A", "no.such.module:app")
    assert result.returncode == 2 and "cannot load Celery app" in result.stderr


def test_serve_read_only_flag_and_setting():
    assert "--read-only" in run("serve", "--help").stdout
    result = run("serve", "--no-events", env={"MONITOR_READ_ONLY": "maybe"})
    assert result.returncode == 2 and "MONITOR_READ_ONLY" in result.stderr
    result = run("serve", "--no-events", env={"MONITOR_BASIC_AUTH": "flower:topsecret,flower:x"})
    assert result.returncode == 2 and "MONITOR_BASIC_AUTH" in result.stderr
    assert "topsecret" not in result.stderr


def test_celery_sub_command_serves_the_app(settings, redis_url):
    port = free_port()
    proc = start_module(
        "celery",
        *("-A", "tests.workerapp", "monitor", "--port", str(port), "--no-events"),
        *("--redis", redis_url, "--prefix", settings.prefix),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        workers = lambda: http_get(f"http://127.0.0.1:{port}/api/v1/workers")  # noqa: E731
        assert wait_for(workers, 30, 0.2).json() == {"workers": []}
    finally:
        stop_process(proc)
    assert proc.returncode == 0


# -- users and tokens ----------------------------------------------------------------

PASSWORD = "a long enough password"


def admin(settings, *args, input=None):
    """One users/tokens command in-process (click's runner), against the real Redis."""
    options = ["--redis", settings.redis_url, "--prefix", settings.prefix]
    return CliRunner().invoke(main, [*args, *options], input=input)


def test_users_and_tokens_from_the_command_line(store, settings):
    auth = AuthStore(store.redis, store.keys, settings)
    result = admin(
        settings,
        "users",
        "add",
        "alice",
        "--role",
        "operator",
        "--password-stdin",
        input=PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output
    assert auth.verify_password("alice", PASSWORD) == Principal("alice", Role.OPERATOR, "basic")

    refused = admin(settings, "users", "add", "alice", input=PASSWORD + "\n")
    assert refused.exit_code == 1 and "exists" in refused.output
    refused = admin(settings, "users", "add", "bad name", input=PASSWORD + "\n")
    assert refused.exit_code == 1 and "invalid name" in refused.output
    assert admin(settings, "users", "add", "bob", "--role", "root").exit_code == 2

    listing = admin(settings, "users", "list")
    assert listing.exit_code == 0 and "scrypt" not in listing.output
    assert listing.output.splitlines()[1].split()[:2] == ["alice", "operator"]
    rows = json.loads(admin(settings, "users", "list", "--json").stdout)
    assert [(r["name"], r["role"]) for r in rows] == [("alice", "operator")]

    assert admin(settings, "users", "role", "alice", "admin").exit_code == 0
    assert auth.get_user("alice")["role"] == "admin"

    created = admin(settings, "tokens", "create", "ci", "--role", "operator", "--user", "alice")
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()  # stdout holds the token alone: TOKEN=$(monitor tokens create)
    token_id = token.split("_")[1]
    assert auth.verify_token(token) == Principal("alice", Role.OPERATOR, "token", token_id)
    assert "shown only once" in created.stderr
    listing = admin(settings, "tokens", "list")
    assert token_id in listing.output and token.split("_")[2] not in listing.output

    assert admin(settings, "tokens", "revoke", "ci").exit_code == 0
    assert auth.verify_token(token) is None
    again = admin(settings, "tokens", "revoke", "ci")
    assert again.exit_code == 1 and "no token" in again.output

    assert admin(settings, "users", "remove", "alice").exit_code == 0
    assert auth.list_users() == []
    assert admin(settings, "users", "remove", "alice").exit_code == 1

    # every change, and every refused one, is in the audit log (reads are not)
    entries = AuditLog(store.redis, store.keys, settings).list()["entries"][::-1]
    assert [(e["action"], e["target"], e["ok"]) for e in entries] == [
        ("user.add", "alice", True),
        ("user.add", "alice", False),
        ("user.add", "bad name", False),
        ("user.role", "alice", True),
        ("token.create", "ci", True),
        ("token.revoke", "ci", True),
        ("token.revoke", "ci", False),
        ("user.remove", "alice", True),
        ("user.remove", "alice", False),
    ]
    assert {(e["via"], e["role"]) for e in entries} == {("cli", "admin")}
    assert all(PASSWORD not in json.dumps(e) and token not in json.dumps(e) for e in entries)


def test_users_add_reads_a_piped_password(store, settings):
    auth = AuthStore(store.redis, store.keys, settings)
    options = ("--redis", settings.redis_url, "--prefix", settings.prefix)
    result = run("users", "add", "carol", *options, input=PASSWORD + "\r\n")  # not a terminal
    assert result.returncode == 0, result.stderr
    assert auth.verify_password("carol", PASSWORD).role is Role.VIEWER

    result = run("users", "password", "carol", *options, input="x" * 10_000_000)
    assert result.returncode == 1 and "at most 1024 bytes" in result.stderr
    result = run("users", "add", "dave", *options, input="")
    assert result.returncode == 1 and "at least 8" in result.stderr
    assert [u["name"] for u in auth.list_users()] == ["carol"]


def test_users_commands_say_when_redis_is_away():
    result = run("users", "list", "--redis", "redis://127.0.0.1:1/0")
    assert result.returncode == 1 and "Redis:" in result.stderr
    assert "Traceback" not in result.stderr


def _read_until(fd, wanted: bytes, seen: bytearray, start: int = 0, timeout: float = 30.0) -> int:
    """Read the terminal into ``seen`` until ``wanted`` appears after ``start``; its end."""
    deadline = time.monotonic() + timeout
    while wanted not in seen[start:]:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {wanted!r} in {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            assert chunk, f"terminal closed before {wanted!r}: {bytes(seen)!r}"
            seen += chunk
    return seen.index(wanted, start) + len(wanted)


def test_users_add_prompts_twice_without_echo_on_a_terminal(store, settings):
    argv = [sys.executable, "-m", "monitor", "users", "add", "erin", "--role", "admin"]
    argv += ["--redis", settings.redis_url, "--prefix", settings.prefix]
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session whose controlling terminal is the pty
        try:
            os.chdir(ROOT)
            os.execve(sys.executable, argv, clean_env())
        finally:
            os._exit(127)
    seen = bytearray()
    try:
        at = _read_until(fd, b"Password: ", seen)
        os.write(fd, b"first password\n")
        at = _read_until(fd, b"Repeat for confirmation: ", seen, at)
        os.write(fd, b"another password\n")  # a mismatch asks again
        at = _read_until(fd, b"do not match", seen, at)
        at = _read_until(fd, b"Password: ", seen, at)
        os.write(fd, (PASSWORD + "\n").encode())
        at = _read_until(fd, b"Repeat for confirmation: ", seen, at)
        os.write(fd, (PASSWORD + "\n").encode())
        _read_until(fd, b"user erin added", seen, at)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b"first password" not in seen and PASSWORD.encode() not in seen  # never echoed
    auth = AuthStore(store.redis, store.keys, settings)
    assert auth.verify_password("erin", PASSWORD).role is Role.ADMIN
