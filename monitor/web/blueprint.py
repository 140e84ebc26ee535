"""The ``monitor`` Blueprint: templates, static files and the page routes hang on it.

Page routes live in :mod:`monitor.web.pages` (frontend); the JSON API is on
its own blueprints (:mod:`monitor.web.api`, :mod:`monitor.web.flower_api`) so
that they can be registered under the same URL prefix.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Blueprint

logger = logging.getLogger(__name__)

_PACKAGE = Path(__file__).resolve().parent.parent

bp = Blueprint(
    "monitor",
    __name__,
    template_folder=str(_PACKAGE / "templates"),
    static_folder=str(_PACKAGE / "static" / "monitor"),
    static_url_path="/static",
)
