"""Reading numbers back from what the store (or a broker, or a worker's reply) holds.

The store's Redis is data, written by every process running the hooks and by
anything else with access to it: a stored "time" or "count" may be text, NaN,
infinite, or an integer too large for a float. These are the only readers of
such values; each is total (it never raises) and says what it gives instead.
"""

from __future__ import annotations

import math
from typing import Any


def finite_float(value: Any) -> float | None:
    """A stored value as a finite float, or None (missing, text, NaN, infinite, too large)."""
    try:
        number = float(value) if value is not None else None
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number is not None and math.isfinite(number) else None


def stored_count(value: Any) -> float:
    """A stored count or sum as a finite number >= 0; anything else counts as 0."""
    number = finite_float(value)
    return number if number is not None and number >= 0 else 0.0
