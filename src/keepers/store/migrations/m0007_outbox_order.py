"""An index for the outbox claim: a row waits while an earlier row of the same enrollment is
undelivered, which PostgreSQL answers from this index instead of scanning the outbox
(DuckDB scans it fast enough and pays for indexes on every insert)."""

from __future__ import annotations

from keepers.store.database import Dialect


def statements(d: Dialect) -> list[str]:
    if d.name != "postgres":
        return []
    return ["CREATE INDEX outbox_enrollment ON outbox (enrollment_id, outbox_id)"]
