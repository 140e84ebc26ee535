"""Page routes: server-rendered shells whose data the browser fetches and keeps live.

Each page renders ``page.html`` with the page's name and parameters; the
JavaScript (``static/monitor/monitor.js``) draws it from the REST API and the
Socket.IO rooms. URLs follow Flower's so existing bookmarks keep working.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, render_template, url_for

from .blueprint import bp


def _page(page: str, title: str, **params: Any) -> str:
    ext = current_app.extensions["monitor"]
    prefix = ext.url_prefix or ""
    config = {
        "page": page,
        "params": params,
        "prefix": prefix,
        "api": prefix + "/api/v1",
        "socketio_path": prefix + "/socket.io",
        "static": url_for("monitor.static", filename=""),
    }
    return render_template("monitor/page.html", page=page, title=title, config_json=config)


@bp.get("/")
def overview() -> str:
    return _page("overview", "Overview")


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
    return _page("worker", f"Worker {hostname}", hostname=hostname)
