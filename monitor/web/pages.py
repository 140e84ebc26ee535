"""Page routes: server-rendered shells whose data the browser fetches and keeps live.

Each page renders ``page.html`` with the page's name and parameters; the
JavaScript (``static/monitor/monitor.js``) draws it from the REST API and the
Socket.IO rooms. URLs follow Flower's so existing bookmarks keep working.
The page's config (who is looking, may they act, the CSRF token its POSTs
carry, the state names of :mod:`monitor.vocabulary`) travels as JSON in a
non-executable ``<script type="application/json">``: the
Content-Security-Policy allows no inline script. The header (user, log
out) is rendered here, so it works before any script runs.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, render_template, url_for

from ..auth import Role
from ..vocabulary import PAGE_STATES, RETRIABLE_STATES, UNFINISHED_STATES
from . import security
from .api import register_converter
from .blueprint import bp

# ``<anypath:...>``: a task name is any text, newlines included (see api.AnyPath).
register_converter(bp)

#: The history charts' scripts (pages that chart history): the vendored chart
#: library, then the component (static/monitor/charts.js, window.MonitorCharts).
CHART_SCRIPTS = ("vendor/uPlot.iife.min.js", "charts.js")


def _page(page: str, title: str, scripts: tuple[str, ...] = (), **params: Any) -> str:
    """Render one page. ``scripts``: files under static/monitor/ (``pages/queues.js``)
    that register the page's drawing function; loaded before monitor.js."""
    ext = current_app.extensions["monitor"]
    prefix = ext.url_prefix or ""
    config = {
        "page": page,
        "params": params,
        "prefix": prefix,
        "api": prefix + "/api/v1",
        "socketio_path": ext.socketio_path,
        "socketio_namespace": ext.namespace,
        "static": url_for("monitor.static", filename=""),
        # the state vocabulary, so that no script spells it again
        "states": list(PAGE_STATES),
        "bulk_states": {"retry": list(RETRIABLE_STATES), "revoke": list(UNFINISHED_STATES)},
        **security.page_config(),  # who is looking, may they act, CSRF token
    }
    user = config.get("user")
    # The audit log is for operators once users exist (the API says the same).
    may_audit = not config.get("users_configured") or (
        user is not None and Role.parse(user["role"]).allows(Role.OPERATOR)
    )
    config["may_audit"] = may_audit
    return render_template(
        "monitor/page.html",
        page=page,
        title=title,
        config_json=config,
        user=user,
        users_configured=config.get("users_configured"),
        can_act=config.get("can_act"),
        may_audit=may_audit,
        csrf_token=config.get("csrf_token"),
        scripts=scripts,
    )


@bp.get("/")
def overview() -> str:
    return _page("overview", "Overview", scripts=CHART_SCRIPTS)


@bp.get("/tasks")
def tasks() -> str:
    return _page("tasks", "Tasks")


@bp.get("/task/<path:task_id>")
def task(task_id: str) -> str:
    return _page("task", f"Task {task_id}", id=task_id)


@bp.get("/workers")
def workers() -> str:
    return _page("workers", "Workers")


@bp.get("/worker/<path:hostname>")
def worker(hostname: str) -> str:
    return _page("worker", f"Worker {hostname}", scripts=CHART_SCRIPTS, hostname=hostname)


@bp.get("/bulk")
@security.require(Role.OPERATOR)
def bulk() -> str:
    """Retry or revoke the tasks a filter selects: dry run, confirm, live progress."""
    return _page("bulk", "Bulk actions")


@bp.get("/audit")
@security.require(Role.OPERATOR)
def audit() -> str:
    """The audit log, newest first (operators; open while no user exists)."""
    return _page("audit", "Audit log")


@bp.get("/queues")
def queues() -> str:
    """Every known queue: depth, consumers, oldest message, history, queue wait."""
    return _page("queues", "Queues", scripts=(*CHART_SCRIPTS, "pages/queues.js"))


@bp.get("/alerts")
def alerts() -> str:
    """Alert rules, what fires now, pending deliveries and the sent log (viewers read,
    operators edit the UI's rules)."""
    return _page("alerts", "Alerts", scripts=("pages/alerts.js",))


@bp.get("/lost")
def lost_page() -> str:
    """Lost and stuck tasks, broker redeliveries, configuration risks (monitor.lost)."""
    return _page("lost", "Lost & risks", scripts=("pages/lost.js",))


@bp.get("/beat")
def beat() -> str:
    """Periodic tasks: beat_schedule and redbeat entries, last and next runs, missed ones."""
    return _page("beat", "Periodic tasks", scripts=("pages/beat.js",))


@bp.get("/task-name/<anypath:name>")
def task_name(name: str) -> str:
    """One task name: counters, failure rate, runtime distribution, failures by type."""
    return _page(
        "task_name", f"Task name {name}", scripts=(*CHART_SCRIPTS, "pages/task_name.js"), name=name
    )
