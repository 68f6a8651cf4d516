"""The dashboard's reports are warmed after each scheduled compute while someone uses the
dashboard, so the next visitor finds the overview's reports ready for the new run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keepers.errors import KeepersError
from keepers.services.keepers import Keepers
from keepers.services.scheduler import ComputeScheduler
from keepers.web.dashboard import WARM_REPORTS, ReportCache

START = datetime(2026, 1, 5, tzinfo=UTC)


def _orders(first: int, last: int) -> list[dict]:
    """Customers `first`..`last - 1`, each with an order and a repeat order."""
    messages: list[dict] = []
    for i in range(first, last):
        user, at = f"w{i}", START + timedelta(days=i % 40)
        messages.append(
            {
                "type": "identify",
                "userId": user,
                "messageId": f"wi{i}",
                "timestamp": at.isoformat(),
                "traits": {"email": f"{user}@example.com"},
            }
        )
        for n, later in enumerate((at, at + timedelta(days=20 + i % 30))):
            messages.append(
                {
                    "type": "track",
                    "userId": user,
                    "event": "Order Completed",
                    "messageId": f"wo{i}-{n}",
                    "timestamp": later.isoformat(),
                    "properties": {"order_id": f"o{i}-{n}", "revenue": 10.0 + i + 5 * n},
                }
            )
    return messages


def _cached_for(cache: ReportCache, run: int) -> set[str]:
    return {key[1] for key in cache.kept_values if key[0] == "report" and key[-1] == run}


def test_reports_are_warm_for_the_new_run_only_while_the_dashboard_is_used(
    keepers: Keepers,
) -> None:
    assert not keepers.ingest_messages(_orders(0, 30), "test").rejected
    cache = ReportCache(keepers)
    scheduler = ComputeScheduler(keepers, 0, after_compute=cache.warm)
    scheduler.tick()
    assert _cached_for(cache, cache.run()) == set()  # nobody has looked: nothing computed

    cache.report("funnel", None)  # a visitor opens the overview
    assert not keepers.ingest_messages(_orders(30, 40), "test").rejected
    scheduler.tick()
    run = cache.run()
    assert _cached_for(cache, run) == {"funnel", "churn"} == set(WARM_REPORTS) - {"clv"}
    with pytest.raises(KeepersError):  # too few repeat buyers here: no model, not cached
        keepers.lifecycle.report("clv", None)
    warm, fresh = cache.report("funnel", None), keepers.lifecycle.report("funnel", None)
    assert {**warm, "as_of": None} == {**fresh, "as_of": None}  # the new run's numbers

    cache.last_used = (cache.last_used or 0) - 3600  # an hour without visitors
    scheduler.tick()
    assert _cached_for(cache, cache.run()) == set()
