"""Several Keepers processes on one PostgreSQL database (the team deployment): writers run
truly concurrently on separate connections, and identity resolution stays consistent."""

from __future__ import annotations

import threading
import uuid

import pytest

from keepers.services.keepers import Keepers
from keepers.settings import Settings
from keepers.testing.postgres import create_database
from tests.helpers import scalar


@pytest.fixture
def shared_postgres(postgres_server):
    url = create_database(postgres_server, "w_" + uuid.uuid4().hex[:12])
    instances = [Keepers.open(Settings(database_url=url)) for _ in range(4)]
    yield instances
    for instance in instances:
        instance.close()


def test_concurrent_servers_never_split_or_duplicate_customers(shared_postgres):
    errors: list[Exception] = []
    barrier = threading.Barrier(len(shared_postgres))

    def server(index: int, keepers: Keepers) -> None:
        barrier.wait()
        try:
            for n in range(30):
                user = f"user-{n % 7}"
                keepers.ingest_messages(
                    [
                        {
                            "type": "page",
                            "anonymousId": f"anon-{index}-{n}",
                            "messageId": f"p{index}-{n}",
                        },
                        {
                            "type": "identify",
                            "userId": user,
                            "anonymousId": f"anon-{index}-{n}",
                            "messageId": f"i{index}-{n}",
                            "traits": {"seen_by": index},
                        },
                        {
                            "type": "track",
                            "userId": user,
                            "event": "Order Completed",
                            "messageId": f"o{index}-{n}",
                            "properties": {"order_id": f"{user}-{n}", "revenue": 10},
                        },
                    ],
                    "web",
                )
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=server, args=(i, k)) for i, k in enumerate(shared_postgres)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    keepers = shared_postgres[0]
    assert errors == []
    assert scalar(keepers, "SELECT count(*) FROM events") == 4 * 30 * 3
    assert scalar(keepers, "SELECT count(*) FROM customers WHERE merged_into IS NULL") == 7
    assert scalar(keepers, "SELECT count(DISTINCT customer_id) FROM events") == 7
    # the same order id sent by four servers becomes one order
    assert scalar(keepers, "SELECT count(*) FROM orders") == 30
    assert scalar(keepers, "SELECT count(*) FROM identities WHERE kind = 'anon'") == 4 * 30
