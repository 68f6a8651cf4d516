"""The earliest timestamp among the events that queued a customer for the next compute.

When every new event of a customer is dated after the previous run's as-of, that run's
stored traits counted everything before them, so an incremental run brings the traits
forward from the new events alone (`Plan.merged_traits`) instead of rescanning the
customer's history. NULL — identity merges, and rows queued before this column — means
the history is rescanned."""

from __future__ import annotations

from keepers.store.database import Dialect


def statements(d: Dialect) -> list[str]:
    return ["ALTER TABLE dirty_customers ADD COLUMN earliest TIMESTAMPTZ"]
