"""Each compute run keeps the stage counts and segment sizes it left behind.

The next incremental run adds its own moves to them instead of counting a million rows
again (on PostgreSQL at 1M customers the counts were a fifth of an incremental run), and
the counts per run are a history of the funnel. JSON text: stage counts as
`[[stage, n], …]` (a customer can have no stage: `null`), sizes as `{segment: n}`. NULL
for runs before this column: the next run counts."""

from __future__ import annotations

from keepers.store.database import Dialect


def statements(d: Dialect) -> list[str]:
    return [
        "ALTER TABLE compute_runs ADD COLUMN stage_counts TEXT",
        "ALTER TABLE compute_runs ADD COLUMN segment_sizes TEXT",
    ]
