"""Incremental runs re-evaluate only customers whose "days since" values crossed a day count
a rule compares them with (`plan.tick_points`). Stepping the clock through five weeks in
thirds of a day, every run must leave exactly the state an as-of evaluation of everyone gives,
for rules that compare counts with numbers in every way the language allows and for rules
where any day matters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from keepers.domain.definitions import Definitions, SegmentDefinition, default_definitions
from keepers.engine import compute
from keepers.services import lifecycle
from keepers.services.keepers import Keepers
from keepers.services.lifecycle import store_definitions
from keepers.settings import Settings
from tests.helpers import assert_counts_carried

START = datetime(2025, 3, 1, tzinfo=UTC)
SEGMENTS = {
    "exactly_10": "days_since_last_order == 10",
    "fortnight": "days_since_last_order > 7 and days_since_last_order <= 14",
    "viewed_3_or_5": 'days_since("Product Viewed") in [3, 5]',
    "new_left": "20 >= days_since_first_seen",
    "quiet": "days_since_last_active > 2.5",
    "any_day": "days_since_last_seen * 2 > 9 and days_since_last_seen * 2 < 31",
    "healthy": "health_score >= 40",
}
# (user, event, day, hour): orders and views spread over days and hours of the day
EVENTS = [
    ("a", "Order Completed", 0, 9),
    ("a", "Product Viewed", 1, 23),
    ("b", "Product Viewed", 2, 0),
    ("b", "Order Completed", 3, 13),
    ("b", "Order Completed", 6, 18),
    ("c", "Signed Up", 4, 6),
    ("c", "Product Viewed", 9, 12),
    ("d", "Email Opened", 5, 3),
    ("d", "Order Completed", 11, 21),
    ("a", "Order Completed", 16, 2),
    ("b", "Product Viewed", 22, 8),
]
HISTORY = ("stage_since", "stage_cause", "previous_stage")


def messages(events: list[tuple[str, str, int, int]], first: int = 0) -> list[dict[str, Any]]:
    out = []
    for index, (user, event, day, hour) in enumerate(events, start=first):
        message = {
            "type": "track",
            "userId": user,
            "event": event,
            "messageId": f"m{index}",
            "timestamp": (START + timedelta(days=day, hours=hour)).isoformat(),
            "properties": {},
        }
        if event == "Order Completed":
            message["properties"] = {"order_id": f"o{index}", "revenue": 50.0}
        out.append(message)
    return out


def stored(keepers: Keepers) -> dict[int, dict[str, Any]]:
    with keepers.db.transaction() as tx:
        rows = tx.fetch_arrow("SELECT * FROM customer_state").to_pylist()
    return {r.pop("customer_id"): {k: v for k, v in r.items() if k not in HISTORY} for r in rows}


def evaluated(keepers: Keepers, as_of: datetime) -> dict[int, dict[str, Any]]:
    rows = lifecycle.state_as_of(keepers.db, as_of=as_of).to_pylist()
    return {r.pop("customer_id"): r for r in rows}


def opened_with_segments(settings: Settings) -> tuple[Keepers, Definitions]:
    """A store at START whose definitions are the default ones plus SEGMENTS."""
    keepers = Keepers.open(settings, clock=lambda: START)
    definitions = default_definitions()
    definitions.segments += [SegmentDefinition(key=k, rule=r) for k, r in SEGMENTS.items()]
    with keepers.db.transaction() as tx:
        store_definitions(tx, definitions, actor="test", summary="segments", now=START)
    return keepers, definitions


@pytest.mark.parametrize("database_url", ["duckdb", "postgres"], indirect=True)
def test_incremental_runs_through_five_weeks_equal_an_evaluation_of_everyone(
    settings: Settings,
) -> None:
    """Events arrive as a live log (each dated after the run before it: traits brought
    forward) and once late (dated two weeks back: that history is rescanned); an anonymous
    profile staged by earlier runs is merged into a known customer (its row goes). After
    every run the counts it reports must equal a count of the tables."""
    keepers, _ = opened_with_segments(settings)
    try:
        live = messages(EVENTS)
        anonymous = {"type": "track", "anonymousId": "anon", "event": "Product Added"}
        anonymous["timestamp"] = (START + timedelta(days=1)).isoformat()
        keepers.ingest_messages([{**anonymous, "messageId": "x0"}], source_id="test")
        entered: set[str] = set()
        modes = set()
        for step in range(1, 5 * 7 * 3):
            as_of = START + timedelta(hours=8 * step, minutes=step % 5)
            due = [m for m in live if datetime.fromisoformat(m["timestamp"]) <= as_of]
            live = live[len(due) :]
            if step == 60:  # day 20: an order of day 6 arrives only now
                due += messages([("c", "Order Completed", 6, 1)], first=len(EVENTS))
            if step == 45:  # day 15: the anonymous profile turns out to be "d"
                due.append({"type": "identify", "userId": "d", "anonymousId": "anon"})
                due[-1]["messageId"] = "x1"
            if due:
                keepers.ingest_messages(due, source_id="test")
            report = keepers.compute(as_of=as_of)
            assert_counts_carried(keepers, report)
            modes.add(report.mode)
            state = stored(keepers)
            assert state == evaluated(keepers, as_of), f"state differs at {as_of}"
            entered |= {s for row in state.values() for s in (row["segments"] or "").split(",")}
    finally:
        keepers.close()
    assert not live and modes == {"full", "incremental"}
    # every segment was entered by someone at some point, so each rule was exercised
    assert set(SEGMENTS) <= entered


@pytest.mark.parametrize("database_url", ["duckdb", "postgres"], indirect=True)
@pytest.mark.parametrize("share", [1.0, 0.0], ids=["in_place", "rebuilt"])
def test_full_runs_over_a_stored_state_equal_an_evaluation_of_everyone(
    settings: Settings, share: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full run over a stored DuckDB state rewrites only the rows whose traits changed
    (`share` 1.0) or rebuilds the table (0.0); either way the result is the state as of
    then. Days pass with and without events (window counts change with no new event), an
    anonymous profile is merged away, and a stage rule changes (stages move, traits do
    not)."""
    monkeypatch.setattr(compute, "REWRITE_SHARE", share)
    rebuilt = []
    rebuild = compute._rebuild_state
    monkeypatch.setattr(
        compute, "_rebuild_state", lambda tx, source: rebuilt.append(1) or rebuild(tx, source)
    )
    keepers, definitions = opened_with_segments(settings)
    try:
        live = messages(EVENTS)
        anonymous = {"type": "track", "anonymousId": "anon", "event": "Product Added"}
        keepers.ingest_messages(
            [
                {
                    **anonymous,
                    "messageId": "x0",
                    "timestamp": (START + timedelta(days=1)).isoformat(),
                }
            ],
            source_id="test",
        )
        for day in range(0, 60, 3):
            as_of = START + timedelta(days=day, hours=12)
            due = [m for m in live if datetime.fromisoformat(m["timestamp"]) <= as_of]
            live = live[len(due) :]
            if day == 15:  # the anonymous profile turns out to be "a"
                due.append({"type": "identify", "userId": "a", "anonymousId": "anon"})
                due[-1]["messageId"] = "x1"
            if day == 30:  # a stage rule changes: stages move, no trait does
                for stage in definitions.stage_model.stages:
                    if stage.key == "retention":
                        stage.rule = "orders >= 3"
                with keepers.db.transaction() as tx:
                    store_definitions(tx, definitions, actor="test", summary="rule", now=as_of)
            if due:
                keepers.ingest_messages(due, source_id="test")
            report = keepers.compute(as_of=as_of, full=True)
            assert report.mode == "full"
            assert_counts_carried(keepers, report)
            assert stored(keepers) == evaluated(keepers, as_of), f"state differs at {as_of}"
    finally:
        keepers.close()
    assert not live
    # the first run creates the table; after it, on DuckDB `share` decides how changed rows
    # are written; PostgreSQL always rebuilds
    in_place = share == 1.0 and not settings.database_url.startswith("postgres")
    assert bool(rebuilt) != in_place
