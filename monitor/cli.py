"""The command line: ``monitor`` / ``python -m monitor`` / ``celery -A proj monitor``.

The only place that configures logging. Every option names its ``MONITOR_*``
variable explicitly; values go through :meth:`Settings.from_env`, so a bad
value exits with status 2 and a message naming the variable or flag.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

import click

from .config import ConfigError, Settings

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
    logger.info("recording events into %s (prefix %r)", settings.redis_url, settings.prefix)
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
    default=True,
    help="Embed the event receiver (off for signals-only setups).",
)
def serve(app_spec: str | None, with_events: bool, **options: Any) -> None:
    """Serve the dashboard (with the event receiver embedded)."""
    from .web.server import run_server

    settings = settings_from(**options)
    _stop_on_sigterm()
    try:
        run_server(settings, events=with_events, app=_load_app(app_spec))
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
