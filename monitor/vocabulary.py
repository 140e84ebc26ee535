"""One vocabulary: the names the store, the Lua script, the API and the page share.

State names and their time fields, task field groups, and the spelling of the
per-minute/per-hour stats fields live here and are passed to the write script
(the way ranks are) and to the page (in its config), so no other module, script
or JavaScript file spells them again.
"""

from __future__ import annotations

# -- states and the task fields that hold their times -------------------------
# (issue 10, "one vocabulary": filled in by the refactor)

# -- task field groups (list rows, detail, searchable) ----------------------------
# (issue 10: filled in by the refactor)

# -- stats fields: per-minute / per-hour counters and histograms ----------------
# (issue 10: filled in with the history and metrics work)
