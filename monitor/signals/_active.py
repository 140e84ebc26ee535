"""The process's active recorder (None until ``monitor.signals.connect()``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .recorder import Recorder

recorder: Recorder | None = None
