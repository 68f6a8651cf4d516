"""Journey steps that act outside email: an ad-audience upload checked by a fake Meta
Graph API that validates every request, a removal when the customer withdraws ad consent,
and a trait update that comes back as an identify call (deduplicated on retry)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from keepers.delivery.audiences import sha256_hex
from keepers.services.keepers import Keepers
from keepers.settings import Settings
from tests.integration.test_delivery_audiences import META_TOKEN, FakeMeta, serve

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
JOURNEY = {
    "key": "vip-ads",
    "trigger": {"stage_entered": "conversion"},
    "steps": [
        {"id": "ads", "audience": {"platform": "meta", "audience_id": "123456", "action": "add"}},
        {"id": "mark", "update_trait": {"key": "welcomed", "value": True}},
    ],
}


@pytest.fixture
def meta() -> Iterator[FakeMeta]:
    with contextmanager(serve)(FakeMeta()) as fake:
        yield fake


@pytest.fixture
def keepers(tmp_path: Any, meta: FakeMeta) -> Iterator[Keepers]:
    settings = Settings(
        database_url=str(tmp_path / "k.duckdb"),
        meta_access_token=META_TOKEN,
        meta_api_base=meta.url,
        quiet_hours="",
    )
    opened = Keepers.open(settings, clock=lambda: T0)
    users = ["a", "b", "c"]
    messages = [
        {
            "type": "identify",
            "userId": u,
            "messageId": str(uuid.uuid4()),
            "timestamp": (T0 - timedelta(days=1)).isoformat(),
            "traits": {"email": f" {u.upper()}@Mail.example ", "phone": "+1 (202) 555-0101"},
        }
        for u in users
    ]
    opened.ingest_messages(messages, "t")
    opened.compute()
    yield opened
    opened.close()


def buy(keepers: Keepers, users: list[str]) -> None:
    orders = [
        {
            "type": "track",
            "userId": u,
            "event": "Order Completed",
            "messageId": str(uuid.uuid4()),
            "timestamp": (T0 - timedelta(minutes=1)).isoformat(),
            "properties": {"order_id": f"{u}-1", "revenue": 10.0},
        }
        for u in users
    ]
    keepers.ingest_messages(orders, "t")
    keepers.compute()


def test_audience_upload_and_removal_on_withdrawn_consent(keepers: Keepers, meta: FakeMeta) -> None:
    keepers.journeys.save(JOURNEY)
    keepers.journeys.set_consent("c", "ads", "withdrawn", channel="audience", source="test")
    buy(keepers, ["a", "b", "c"])
    result = keepers.journeys.run()
    # a and b uploaded in one batch, c blocked; then the three trait updates
    assert (result["delivery"]["sent"], result["delivery"]["blocked"]) == (5, 1)
    assert meta.violations == []
    posts = [body for method, _, body in meta.requests if method == "POST"]
    assert len(posts) == 1
    emails = sorted(
        row[posts[0]["payload"]["schema"].index("EMAIL")] for row in posts[0]["payload"]["data"]
    )
    assert emails == sorted(sha256_hex(f"{u}@mail.example") for u in ("a", "b"))
    # b withdraws ad consent: a removal is queued and sent
    keepers.journeys.set_consent("b", "ads", "withdrawn", channel="audience", source="test")
    keepers.journeys.run()
    deletes = [body for method, _, body in meta.requests if method == "DELETE"]
    assert len(deletes) == 1 and meta.violations == []
    removed = deletes[0]["payload"]["data"]
    assert [row[deletes[0]["payload"]["schema"].index("EMAIL")] for row in removed] == [
        sha256_hex("b@mail.example")
    ]
    blocked = keepers.journeys.trace("vip-ads", "c")["messages"][0]
    assert (blocked["state"], blocked["last_error"]) == ("blocked", "no consent for ad audiences")


def test_a_trait_update_comes_back_as_identify_and_drives_rules(keepers: Keepers) -> None:
    keepers.journeys.save(JOURNEY)
    keepers.lifecycle.segment_save("welcomed", 'traits.welcomed == "true"')
    buy(keepers, ["a"])
    keepers.journeys.run()
    with keepers.db.transaction() as tx:
        rows = tx.execute(
            "SELECT source_id, message_id FROM events "
            "WHERE type = 'identify' AND source_id = 'journeys'"
        )
        reference = tx.execute("SELECT reference FROM outbox WHERE channel = 'trait'")[0][0]
    assert rows == [("journeys", reference)]
    keepers.compute()
    assert keepers.lifecycle.segment_show("welcomed")["size"] == 1
