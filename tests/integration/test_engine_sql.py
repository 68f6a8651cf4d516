"""The engine compiles each query once and swaps the as-of time into the kept SQL; these
tests hold that trick to account: the kept SQL must answer exactly like SQL compiled
afresh for that time, on real DuckDB and PostgreSQL stores."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import ibis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keepers.domain.definitions import default_definitions
from keepers.engine.compute import render
from keepers.engine.plan import Plan
from keepers.engine.sql import SENTINELS, timestamp_sql
from keepers.services.keepers import Keepers
from keepers.settings import Settings
from keepers.testing.postgres import create_database

START = datetime(2026, 1, 1, tzinfo=UTC)


def messages() -> list[dict]:
    """Two customers whose windows and day counts change around the tested moments."""
    out = []
    for day, (user, event, props) in enumerate(
        [
            ("a", "Product Viewed", {}),
            ("a", "Order Completed", {"order_id": "o1", "revenue": 20}),
            ("b", "Product Added", {}),
            ("a", "NPS Survey Answered", {"score": 10}),
            ("b", "Checkout Started", {}),
            ("a", "Order Completed", {"order_id": "o2", "revenue": 35.5}),
        ]
    ):
        at = START + timedelta(days=day * 9, hours=day, seconds=day * 7, microseconds=123)
        out.append(
            {
                "type": "track",
                "event": event,
                "userId": user,
                "messageId": f"m{day}",
                "timestamp": at.isoformat(),
                "properties": props,
            }
        )
    return out


def test_the_sentinel_time_appears_in_compiled_sql_in_both_dialects():
    for dialect in ("duckdb", "postgres"):
        plan = Plan.build(default_definitions())
        sql = ibis.to_sql(plan.traits(ibis.literal(SENTINELS[0])), dialect=dialect)
        assert timestamp_sql(SENTINELS[0], dialect) in sql


@settings(max_examples=12, deadline=None)
@given(offset=st.integers(min_value=0, max_value=80 * 86400 * 1_000_000))
def test_kept_sql_answers_like_freshly_compiled_sql(tmp_path_factory, offset):
    path = tmp_path_factory.mktemp("sql") / "k.duckdb"
    keepers = Keepers.open(Settings(database_url=str(path)))
    try:
        keepers.ingest_messages(messages(), "test")
        plan = Plan.build(default_definitions())
        as_of = START + timedelta(microseconds=offset)

        def build(at):
            return plan.evaluate(plan.traits(at), at).order_by("customer_id")

        with keepers.db.transaction() as tx:
            kept = tx.execute(render(tx, plan, "test-evaluate", build, as_of))
            fresh = tx.execute(ibis.to_sql(build(ibis.literal(as_of)), dialect="duckdb"))
        assert kept == fresh
    finally:
        keepers.close()


@pytest.fixture(scope="module")
def postgres_store(postgres_server: str) -> Iterator[Keepers]:
    """One PostgreSQL store with the messages, read (never written) by every example."""
    keepers = Keepers.open(Settings(database_url=create_database(postgres_server, "t_sql")))
    keepers.ingest_messages(messages(), "test")
    yield keepers
    keepers.close()


@settings(max_examples=12, deadline=None)
@given(offset=st.integers(min_value=0, max_value=80 * 86400 * 1_000_000))
def test_kept_sql_answers_like_freshly_compiled_sql_on_postgres(postgres_store, offset):
    """On PostgreSQL a moment's epoch goes into the kept SQL as an exact number (EXTRACT
    would run on every row); day counts, windows and rules must come out the same."""
    plan = Plan.build(default_definitions())
    as_of = START + timedelta(microseconds=offset)

    def build(at):
        evaluated = plan.evaluate(plan.traits(at, jsonb=True), at)
        return evaluated.order_by("customer_id")

    with postgres_store.db.transaction() as tx:
        sql = render(tx, plan, "test-evaluate-pg", build, as_of)
        assert "EXTRACT('epoch' FROM CAST(" not in sql
        kept = tx.execute(sql)
        fresh = tx.execute(ibis.to_sql(build(ibis.literal(as_of)), dialect="postgres"))
    assert kept == fresh


def test_an_as_of_time_with_any_utc_offset_means_the_same_moment(tmp_path):
    """Found by schemathesis: DuckDB knows no zone called '+09:53'. An as-of with an offset
    must answer exactly like the same instant written in UTC."""
    from datetime import timezone

    from keepers.services.lifecycle import explain, state_as_of

    keepers = Keepers.open(Settings(database_url=str(tmp_path / "k.duckdb")))
    try:
        keepers.ingest_messages(messages(), "test")
        instant = START + timedelta(days=40, hours=3)
        offset = instant.astimezone(timezone(timedelta(hours=9, minutes=53)))
        assert state_as_of(keepers.db, as_of=offset) == state_as_of(keepers.db, as_of=instant)
        assert (
            explain(keepers.db, "a", as_of=offset)["stage"]
            == (explain(keepers.db, "a", as_of=instant)["stage"])
        )
        report = keepers.compute(as_of=offset)
        assert report.as_of == instant and report.customers == 2
    finally:
        keepers.close()
