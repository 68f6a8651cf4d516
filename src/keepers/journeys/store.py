"""Journey versions in the store: save (a new version when the content changed), load."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keepers.domain.journeys import Journey, parse_journey
from keepers.errors import InvalidInput, NotFound
from keepers.store.database import Tx

STATUSES = ("active", "paused", "archived")


@dataclass(frozen=True)
class StoredJourney:
    journey: Journey
    version: int
    status: str
    activated_at: datetime
    change_cursor: int


def _body(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else value


def save_journey(tx: Tx, journey: Journey, *, actor: str, now: datetime) -> tuple[int, bool, str]:
    """Store `journey` as its next version; (version, created, summary). Unchanged content
    keeps the current version. A new journey starts at the current end of the change feed,
    so it enrolls from what happens next, not from history."""
    body = journey.model_dump(mode="json", by_alias=True, exclude_none=True)
    rows = tx.execute(
        "SELECT v.version, v.body FROM journeys j JOIN journey_versions v "
        "ON v.journey = j.journey AND v.version = j.version WHERE j.journey = ?",
        [journey.key],
    )
    if rows and _body(rows[0][1]) == body:
        return rows[0][0], False, "unchanged"
    version = (rows[0][0] + 1) if rows else 1
    summary = (
        "created"
        if not rows
        else f"version {version}: customers already in it finish on version {rows[0][0]}"
    )
    tx.execute(
        "INSERT INTO journey_versions VALUES (?, ?, ?, ?, ?, ?)",
        [journey.key, version, json.dumps(body), now, actor, summary],
    )
    if rows:
        tx.execute(
            "UPDATE journeys SET version = ?, status = 'active' WHERE journey = ?",
            [version, journey.key],
        )
    else:
        cursor = tx.execute("SELECT COALESCE(MAX(change_id), 0) FROM changes")[0][0]
        tx.execute(
            "INSERT INTO journeys VALUES (?, ?, 'active', ?, ?)",
            [journey.key, version, now, cursor],
        )
    return version, True, summary


def set_status(tx: Tx, key: str, status: str) -> None:
    if status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}, not '{status}'")
    if not tx.execute("SELECT 1 FROM journeys WHERE journey = ?", [key]):
        raise NotFound(f"no journey '{key}'")
    tx.execute("UPDATE journeys SET status = ? WHERE journey = ?", [status, key])


def current_journeys(tx: Tx, *, status: str | None = None) -> list[StoredJourney]:
    where = "WHERE j.status = ?" if status else ""
    rows = tx.execute(
        "SELECT v.body, j.version, j.status, j.activated_at, j.change_cursor FROM journeys j "
        "JOIN journey_versions v ON v.journey = j.journey AND v.version = j.version "
        f"{where} ORDER BY j.journey",
        [status] if status else [],
    )
    return [StoredJourney(parse_journey(_body(b)), v, s, a, c) for b, v, s, a, c in rows]


def journey_version(tx: Tx, key: str, version: int) -> Journey:
    rows = tx.execute(
        "SELECT body FROM journey_versions WHERE journey = ? AND version = ?", [key, version]
    )
    if not rows:
        raise NotFound(f"no journey '{key}' version {version}")
    return parse_journey(_body(rows[0][0]))


def stored_journey(tx: Tx, key: str) -> StoredJourney:
    for stored in current_journeys(tx):
        if stored.journey.key == key:
            return stored
    raise NotFound(f"no journey '{key}'")


def live_versions(tx: Tx) -> list[tuple[str, int]]:
    """(journey, version) pairs that still have customers in them, plus every active
    journey's current version."""
    rows = tx.execute(
        "SELECT DISTINCT journey, version FROM enrollments WHERE status = 'active' "
        "UNION SELECT journey, version FROM journeys WHERE status = 'active' ORDER BY 1, 2"
    )
    return [(j, v) for j, v in rows]
