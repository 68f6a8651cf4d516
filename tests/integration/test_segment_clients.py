"""Unmodified official clients pointed at a live Keepers server: every event arrives."""

from __future__ import annotations

import json

import pytest
import rudderstack.analytics as rudder
from segment.analytics import Client

from tests.helpers import rows, scalar


@pytest.mark.parametrize("gzip", [False, True])
def test_segment_python_client_delivers_every_call_type(live_server, gzip):
    errors: list[Exception] = []
    client = Client(
        live_server.write_key,
        host=live_server.url,
        gzip=gzip,
        max_retries=1,
        on_error=lambda error, batch: errors.append(error),
    )
    client.identify("user-1", {"email": "Ann@Example.com", "plan": "pro"}, anonymous_id="anon-1")
    client.track(
        "user-1",
        "Order Completed",
        {
            "order_id": "o-1",
            "revenue": 42.5,
            "currency": "EUR",
            "products": [{"product_id": "p-1", "price": 21.25, "quantity": 2}],
        },
    )
    client.page("user-1", "Docs", "Getting started", {"path": "/docs"})
    client.screen("user-1", "App", "Settings")
    client.group("user-1", "acct-1", {"name": "Acme"})
    client.alias("old-user-1", "user-1")
    for n in range(250):  # more than one upload batch of 100
        client.track(
            anonymous_id=f"visitor-{n % 7}",
            event="Product Viewed",
            properties={"product_id": f"p-{n}"},
        )
    client.flush()
    client.join()
    keepers = live_server.keepers
    assert errors == []
    assert scalar(keepers, "SELECT count(*) FROM events") == 6 + 250
    assert rows(keepers, "SELECT type, count(*) FROM events GROUP BY type ORDER BY type") == [
        ("alias", 1),
        ("group", 1),
        ("identify", 1),
        ("page", 1),
        ("screen", 1),
        ("track", 251),
    ]
    assert rows(keepers, "SELECT order_id, revenue FROM orders") == [("o-1", 42.5)]
    assert (
        scalar(keepers, "SELECT email FROM customers WHERE user_id = 'user-1'") == "ann@example.com"
    )
    library = scalar(keepers, "SELECT context FROM events WHERE type = 'identify'")
    library = json.loads(library) if isinstance(library, str) else library
    assert library["library"]["name"] == "analytics-python"
    assert scalar(keepers, "SELECT count(*) FROM events WHERE sent_at IS NULL") == 0


def test_rudderstack_python_sdk_delivers_gzipped_batches(live_server):
    errors: list[Exception] = []
    rudder.write_key = live_server.write_key
    rudder.dataPlaneUrl = live_server.url
    rudder.on_error = lambda error, batch: errors.append(error)
    rudder.sync_mode = False
    try:
        rudder.identify("r-1", {"email": "r@example.com"})
        rudder.track("r-1", "Signed Up", {"type": "organic"})
        rudder.flush()
    finally:
        rudder.shutdown()
        rudder.default_client = None
    assert errors == []
    assert rows(live_server.keepers, "SELECT type, event FROM events ORDER BY type") == [
        ("identify", None),
        ("track", "Signed Up"),
    ]
