"""The command line: ``monitor`` / ``python -m monitor`` / ``celery -A proj monitor``.

The only place that configures logging. Every option names its ``MONITOR_*``
variable explicitly; values go through :meth:`Settings.from_env`, so a bad
value exits with status 2 and a message naming the variable or flag.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

import click

from .config import ConfigError, Settings, mask_url

logger = logging.getLogger(__name__)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _load_app(spec: str | None) -> Any:
    """``-A proj.celery:app`` like the ``celery`` command (module, or module:attr)."""
    if not spec:
        return None
    from celery.app.utils import find_app

    try:
        return find_app(spec)
    except Exception as exc:  # import errors, missing attribute ...
        message = f"cannot load Celery app {spec!r}: {exc}"
        raise click.BadParameter(message, param_hint="-A/--app") from None


def settings_from(**options: Any) -> Settings:
    try:
        return Settings.from_env(**{k: v for k, v in options.items() if v is not None})
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--redis, --broker, --prefix, -A: shared by every command."""
    decorators = [
        click.option(
            "--redis",
            "redis_url",
            envvar="MONITOR_REDIS_URL",
            help="Redis that stores the monitor's data [MONITOR_REDIS_URL].",
        ),
        click.option(
            "-b",
            "--broker",
            "broker_url",
            envvar="MONITOR_BROKER_URL",
            help="Celery broker to listen on for events [MONITOR_BROKER_URL].",
        ),
        click.option(
            "--prefix",
            envvar="MONITOR_PREFIX",
            help="Prefix of the monitor's Redis keys [MONITOR_PREFIX].",
        ),
        click.option(
            "-A",
            "--app",
            "app_spec",
            envvar="MONITOR_APP",
            help="Your Celery app (module:attribute), for its broker settings.",
        ),
        click.option(
            "--max-tasks",
            type=int,
            envvar="MONITOR_MAX_TASKS",
            help="Tasks kept [MONITOR_MAX_TASKS].",
        ),
        click.option(
            "--max-age",
            type=float,
            envvar="MONITOR_MAX_AGE",
            help="Seconds a task is kept [MONITOR_MAX_AGE].",
        ),
        click.option(
            "--enable-events/--no-enable-events",
            default=None,
            envvar="MONITOR_ENABLE_EVENTS",
            help="Ask workers to send events periodically [MONITOR_ENABLE_EVENTS].",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    default="INFO",
    envvar="MONITOR_LOG_LEVEL",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.version_option(package_name="celery-monitor")
def main(log_level: str) -> None:
    """celery monitor: every Celery task's lifecycle in Redis, live in the browser."""
    _configure_logging(log_level)


def _stop_on_sigterm() -> None:
    # SIGTERM (systemd, docker stop, our tests) ends like Ctrl-C: cleanly.
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@main.command()
@common_options
def events(app_spec: str | None, **options: Any) -> None:
    """Record Celery events from the broker into Redis."""
    from .events import Receiver

    settings = settings_from(**options)
    receiver = Receiver(settings, _load_app(app_spec))
    _stop_on_sigterm()
    logger.info(
        "recording events into %s (prefix %r)", mask_url(settings.redis_url), settings.prefix
    )
    receiver.start()
    try:
        while receiver._thread is not None and receiver._thread.is_alive():
            receiver._thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()


def serve_options(func: Callable[..., Any]) -> Callable[..., Any]:
    decorators = [
        click.option("--host", envvar="MONITOR_HOST", help="Address to bind [MONITOR_HOST]."),
        click.option("--port", type=int, envvar="MONITOR_PORT", help="Port [MONITOR_PORT]."),
        click.option(
            "--url-prefix",
            envvar="MONITOR_URL_PREFIX",
            help="URL prefix behind a reverse proxy [MONITOR_URL_PREFIX].",
        ),
        click.option(
            "--message-queue",
            envvar="MONITOR_MESSAGE_QUEUE",
            help="Socket.IO message queue URL [MONITOR_MESSAGE_QUEUE].",
        ),
        click.option(
            "--read-only",
            is_flag=True,
            default=None,
            help="Refuse every action whatever the users [MONITOR_READ_ONLY].",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


@main.command()
@common_options
@serve_options
@click.option(
    "--events/--no-events",
    "with_events",
    default=None,
    help="Embed the event receiver (off for signals-only setups) [MONITOR_SERVE_EVENTS].",
)
def serve(app_spec: str | None, with_events: bool | None, **options: Any) -> None:
    """Serve the dashboard (with the event receiver embedded)."""
    from .web.server import run_server

    settings = settings_from(**options)
    events = settings.serve_events if with_events is None else with_events
    _stop_on_sigterm()
    try:
        run_server(settings, events=events, app=_load_app(app_spec))
    except KeyboardInterrupt:
        pass


@main.command()
@click.option(
    "--redis",
    "redis_url",
    envvar="MONITOR_REDIS_URL",
    help="Use this Redis instead of 127.0.0.1:6379 or an embedded one.",
)
@click.option("--port", type=int, envvar="MONITOR_PORT", help="Dashboard port.")
@click.option("--rate", type=float, default=2.0, show_default=True, help="Tasks sent per second.")
@click.option(
    "--embedded-redis",
    is_flag=True,
    help="Start a private Redis even if one answers on 127.0.0.1:6379.",
)
def demo(redis_url: str | None, port: int | None, rate: float, embedded_redis: bool) -> None:
    """Embedded Redis if needed, a real worker, traffic and the dashboard."""
    from .demo import run_demo

    settings = settings_from(redis_url=redis_url, port=port, prefix="monitor-demo")
    _stop_on_sigterm()
    try:
        run_demo(settings, redis_given=redis_url is not None, rate=rate, embedded=embedded_redis)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None


# -- users and tokens (monitor/auth.py), recorded in the audit log -------------

_ROLES = click.Choice(["viewer", "operator", "admin"], case_sensitive=False)


def redis_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--redis, --prefix: where the users, tokens and audit log live."""
    func = click.option(
        "--prefix",
        envvar="MONITOR_PREFIX",
        help="Prefix of the monitor's Redis keys [MONITOR_PREFIX].",
    )(func)
    return click.option(
        "--redis",
        "redis_url",
        envvar="MONITOR_REDIS_URL",
        help="Redis that stores the monitor's data [MONITOR_REDIS_URL].",
    )(func)


class _Admin:
    """One users/tokens command: the auth store, and an audit entry for what it did."""

    def __init__(self, options: dict[str, Any]):
        from .audit import AuditLog
        from .auth import AuthStore
        from .keys import Keys
        from .store import redis_client

        settings = settings_from(**options)
        client = redis_client(settings.redis_url)
        self.auth = AuthStore(client, Keys(settings.prefix), settings)
        self.audit = AuditLog(client, Keys(settings.prefix), settings)

    def record(self, action: str, target: str, ok: bool, **fields: Any) -> None:
        import getpass
        import socket

        try:
            who = getpass.getuser()
        except (KeyError, OSError):  # no name for this uid (containers)
            who = "unknown"
        status = "ok" if ok else "refused"
        addr = socket.gethostname()
        self.audit.record(
            who, "admin", "cli", action, target, addr=addr, ok=ok, status=status, **fields
        )

    def run(self, action: str | None, target: str, func: Callable[[], Any], **fields: Any) -> Any:
        """``func()``, audited (unless a read: ``action`` None); refusals exit 1 with
        their message."""
        import redis

        from .auth import AuthError, UnknownUser

        try:
            try:
                result = func()
            except (AuthError, UnknownUser) as exc:
                message = exc.args[0] if exc.args else str(exc)
                if action:
                    self.record(action, target, False, result={"error": message}, **fields)
                raise click.ClickException(message) from None
            if action:
                self.record(action, target, True, **fields)
        except redis.RedisError as exc:
            raise click.ClickException(f"Redis: {exc}") from None
        return result


def _read_password(from_stdin: bool) -> str:
    """From a hidden prompt, asked twice; from one line of stdin with --password-stdin
    or when stdin is not a terminal (scripts, ``echo pw | monitor users add``)."""
    from .auth import MAX_PASSWORD_BYTES

    if from_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline(MAX_PASSWORD_BYTES + 2)  # a 10 MB line is not read whole
        return line.removesuffix("\n").removesuffix("\r")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


def _when(created: Any) -> str:
    import datetime

    if not isinstance(created, int | float):
        return "-"
    return datetime.datetime.fromtimestamp(created, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    cells = [[c.upper() for c in columns]]
    cells += [[_when(r[c]) if c == "created" else str(r[c] or "-") for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@main.group()
def users() -> None:
    """Users who sign in to the dashboard (stored in the monitor's Redis).

    Roles: viewer (reads), operator (reads and acts), admin (operator, plus users
    and tokens). Every change is recorded in the audit log.
    """


@users.command("add")
@click.argument("name")
@click.option("--role", type=_ROLES, default="viewer", show_default=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin's first line.")
@redis_options
def users_add(name: str, role: str, password_stdin: bool, **options: Any) -> None:
    """Add a user; the password is asked twice (hidden), or read from stdin."""
    admin = _Admin(options)
    password = _read_password(password_stdin)
    add = lambda: admin.auth.add_user(name, password, role)  # noqa: E731
    admin.run("user.add", name, add, params={"role": role})
    click.echo(f"user {name} added ({role})")


@users.command("password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin's first line.")
@redis_options
def users_password(name: str, password_stdin: bool, **options: Any) -> None:
    """Set a user's password."""
    admin = _Admin(options)
    password = _read_password(password_stdin)
    admin.run("user.password", name, lambda: admin.auth.set_password(name, password))
    click.echo(f"password of {name} changed")


@users.command("role")
@click.argument("name")
@click.argument("role", type=_ROLES)
@redis_options
def users_role(name: str, role: str, **options: Any) -> None:
    """Change a user's role (tokens bound to the user follow)."""
    admin = _Admin(options)
    admin.run("user.role", name, lambda: admin.auth.set_role(name, role), params={"role": role})
    click.echo(f"user {name} is now {role}")


@users.command("remove")
@click.argument("name")
@redis_options
def users_remove(name: str, **options: Any) -> None:
    """Remove a user and the tokens bound to them."""
    from .auth import UnknownUser

    admin = _Admin(options)

    def remove() -> list[str]:
        tokens = admin.auth.remove_user(name)
        if tokens is None:
            raise UnknownUser(f"no user {name!r}")
        return tokens

    tokens = admin.run("user.remove", name, remove)
    click.echo(f"user {name} removed" + (f", with tokens {', '.join(tokens)}" if tokens else ""))


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@redis_options
def users_list(as_json: bool, **options: Any) -> None:
    """List users and their roles (never their password hashes)."""
    admin = _Admin(options)
    _table(admin.run(None, "", admin.auth.list_users), ("name", "role", "created"), as_json)


@main.group()
def tokens() -> None:
    """API tokens for scripts (``Authorization: Bearer <token>``), stored hashed."""


@tokens.command("create")
@click.argument("name")
@click.option("--role", type=_ROLES, default="viewer", show_default=True)
@click.option("--user", help="Bind the token to this user: at most their role; dies with them.")
@redis_options
def tokens_create(name: str, role: str, user: str | None, **options: Any) -> None:
    """Create a token and print it: it is shown only this once."""
    admin = _Admin(options)
    create = lambda: admin.auth.create_token(name, role, user)  # noqa: E731
    token = admin.run("token.create", name, create, params={"role": role, "user": user})
    click.echo(token)
    token_id = token.split("_")[1]
    click.echo(f"token {name} ({token_id}, {role}) created; it is shown only once", err=True)


@tokens.command("revoke")
@click.argument("id_or_name")
@redis_options
def tokens_revoke(id_or_name: str, **options: Any) -> None:
    """Revoke the token with this id, or every token with this name."""
    from .auth import UnknownUser

    admin = _Admin(options)

    def revoke() -> list[str]:
        ids = admin.auth.revoke_token(id_or_name)
        if not ids:
            raise UnknownUser(f"no token with id or name {id_or_name!r}")
        return ids

    ids = admin.run("token.revoke", id_or_name, revoke)
    click.echo(f"revoked {', '.join(ids)}")


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@redis_options
def tokens_list(as_json: bool, **options: Any) -> None:
    """List tokens (ids, names, roles; never secrets)."""
    admin = _Admin(options)
    rows = admin.run(None, "", admin.auth.list_tokens)
    _table(rows, ("id", "name", "role", "user", "created"), as_json)


@click.command("monitor")
@serve_options
@click.option("--redis", "redis_url", envvar="MONITOR_REDIS_URL")
@click.option("--prefix", envvar="MONITOR_PREFIX")
@click.option("--events/--no-events", "with_events", default=True)
@click.pass_context
def celery_command(ctx: click.Context, with_events: bool, **options: Any) -> None:
    """Serve the monitor for this Celery app (``celery -A proj monitor``)."""
    from .web.server import run_server

    app = getattr(ctx.obj, "app", None)
    _configure_logging("INFO")
    settings = settings_from(**options)
    _stop_on_sigterm()
    try:
        run_server(settings, events=with_events, app=app)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
